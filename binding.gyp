{
  "targets": [
    {
      "target_name": "vpnmasq_tun",
      "sources": ["native/tun.cc", "native/notify.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-std=c++17", "-pthread"],
      "ldflags": ["-pthread"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
