"""What the lab's test-host programs share: their one JSON line of output,
the end of an outage as a held flow sees it, and a reply that may find no route."""
import json
import sys


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def resumed(back, k, silence=1.5):
    """K answers came back after a silence of at least `silence` seconds (an outage that ended)."""
    if not k:
        return False
    for i in range(1, len(back)):
        if back[i] - back[i - 1] >= silence:
            return len(back) - i >= k
    return False


def answer(sock, data, addr, counts):
    """Sends a reply; one that finds no route is counted in counts["unsent"], not fatal: the router namespace
    is being rebuilt and this host's link went with it between the request and its answer (the requester
    keeps sending). True when it was sent."""
    try:
        sock.sendto(data, addr)
        return True
    except OSError:
        counts["unsent"] += 1
        return False
