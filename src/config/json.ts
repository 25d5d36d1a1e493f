/**
 * The config file's syntax: JSON with full-line `#` and `//` comments. A
 * strict reader that says where a syntax error is (line and column) and which
 * fields appear twice, which JSON.parse silently resolves to the last value.
 */

/** Objects and arrays nested deeper than this are refused (a config needs four levels; the parser recurses per level). */
export const MAX_DEPTH = 32;

/** A syntax error at a line and column of the text (both from 1). */
export class JsonSyntaxError extends Error {
  constructor(message: string, readonly line: number, readonly column: number) {
    super(`syntax error at line ${line}, column ${column}: ${message}`);
  }
}

export interface JsonDocument {
  value: unknown;
  /** Fields given more than once (`a.b`, `forwards[1].proto`), where the repeat starts. */
  duplicates: { field: string; line: number; column: number }[];
}

/** Parses JSON with comment lines; throws JsonSyntaxError. */
export function readJsonWithComments(text: string): JsonDocument {
  const reader = new JsonReader(blankCommentLines(text));
  let value: unknown;
  try {
    value = reader.document();
  } catch (err) {
    if (!(err instanceof OffsetError)) throw err;
    const { line, column } = lineAndColumn(text, err.offset);
    throw new JsonSyntaxError(err.message, line, column);
  }
  return { value, duplicates: reader.duplicateFields.map((d) => ({ field: d.field, ...lineAndColumn(text, d.offset) })) };
}

/** The path of a member: `a`, `a.b`. */
export function childField(parent: string, key: string): string {
  return parent ? `${parent}.${key}` : key;
}

/** Replaces full-line comments with spaces so offsets still match the original text. */
function blankCommentLines(text: string): string {
  return text.replace(/^\uFEFF/, ' ').replace(/^[ \t]*(?:#|\/\/).*$/gm, (line) => ' '.repeat(line.length));
}

function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  return { line, column: offset - before.lastIndexOf('\n') };
}

class OffsetError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

const JSON_SCALAR = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
const JSON_ESCAPE = /\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})/y;
const BARE_WORD = /[A-Za-z_][\w.-]*/y;

/**
 * A strict JSON parser that reports the offset of a syntax error (V8's
 * JSON.parse does not always say where) and records duplicate fields, which
 * JSON.parse silently resolves to the last value.
 */
class JsonReader {
  readonly duplicateFields: { field: string; offset: number }[] = [];
  private offset = 0;

  constructor(private readonly text: string) {}

  document(): unknown {
    const value = this.value('', 0);
    this.skipWhitespace();
    if (this.offset < this.text.length) throw this.error(`unexpected ${this.found()} after the end of the document`);
    return value;
  }

  private value(field: string, depth: number): unknown {
    this.skipWhitespace();
    const c = this.text[this.offset];
    if ((c === '{' || c === '[') && depth >= MAX_DEPTH) throw this.error(`nested deeper than ${MAX_DEPTH} levels`);
    if (c === '{') return this.object(field, depth + 1);
    if (c === '[') return this.array(field, depth + 1);
    if (c === '"') return this.string();
    const scalar = this.match(JSON_SCALAR);
    if (scalar !== undefined) return JSON.parse(scalar);
    const word = this.match(BARE_WORD);
    if (word !== undefined) {
      this.offset -= word.length;
      throw this.error(`unexpected word ${word}; strings must be in double quotes`);
    }
    throw this.error(`expected a value, found ${this.found()}`);
  }

  private object(field: string, depth: number): Record<string, unknown> {
    // A null-prototype object keeps a "__proto__" key an ordinary (unknown) field.
    const result: Record<string, unknown> = Object.create(null);
    this.offset++;
    if (this.closes('}')) return result;
    for (;;) {
      this.skipWhitespace();
      if (this.text[this.offset] !== '"') throw this.error(`expected a double-quoted field name, found ${this.found()}`);
      const keyOffset = this.offset;
      const key = this.string();
      const child = childField(field, key);
      this.skipWhitespace();
      if (this.text[this.offset] !== ':') throw this.error(`expected ':' after field name, found ${this.found()}`);
      this.offset++;
      if (Object.hasOwn(result, key)) this.duplicateFields.push({ field: child, offset: keyOffset });
      result[key] = this.value(child, depth);
      if (this.separatorCloses('}')) return result;
    }
  }

  private array(field: string, depth: number): unknown[] {
    const result: unknown[] = [];
    this.offset++;
    if (this.closes(']')) return result;
    for (;;) {
      result.push(this.value(`${field}[${result.length}]`, depth));
      if (this.separatorCloses(']')) return result;
    }
  }

  /** Consumes `close` (after whitespace) if it comes next. */
  private closes(close: string): boolean {
    this.skipWhitespace();
    if (this.text[this.offset] !== close) return false;
    this.offset++;
    return true;
  }

  /** After a member: consumes ',' (returning false) or `close` (returning true). */
  private separatorCloses(close: '}' | ']'): boolean {
    if (this.closes(close)) return true;
    if (this.text[this.offset] !== ',') throw this.error(`expected ',' or '${close}', found ${this.found()}`);
    this.offset++;
    this.skipWhitespace();
    if (this.text[this.offset] === close) throw this.error(`trailing comma before '${close}'`);
    return false;
  }

  private string(): string {
    const start = this.offset++;
    for (;;) {
      const c = this.text.charCodeAt(this.offset);
      if (c === 0x22) break;
      if (Number.isNaN(c) || c === 0x0a) throw this.error('unterminated string');
      if (c < 0x20) throw this.error('control character in string (escape it)');
      if (c === 0x5c) {
        if (this.match(JSON_ESCAPE) === undefined) throw this.error('invalid escape sequence in string');
      } else {
        this.offset++;
      }
    }
    this.offset++;
    return JSON.parse(this.text.slice(start, this.offset)) as string;
  }

  /** Consumes and returns a sticky regexp's match at the current offset. */
  private match(pattern: RegExp): string | undefined {
    pattern.lastIndex = this.offset;
    const m = pattern.exec(this.text);
    if (!m) return undefined;
    this.offset += m[0].length;
    return m[0];
  }

  private skipWhitespace(): void {
    while (/[ \t\r\n]/.test(this.text[this.offset] ?? '')) this.offset++;
  }

  private found(): string {
    const c = this.text[this.offset];
    return c === undefined ? 'end of file' : JSON.stringify(c);
  }

  private error(message: string): OffsetError {
    return new OffsetError(message, this.offset);
  }
}

