#!/usr/bin/env bash
# Build llama.cpp's command-line tools once, into a cache folder (issue 13).
#
# The reference runtime is llama.cpp 0c1e570, vendored in the PyPI sdist llama-cpp-python==0.3.36.
# Pinning: pip downloads that exact sdist with --require-hashes, so a re-uploaded or tampered
# file fails the download instead of building another llama.cpp. Changing the version means
# changing VERSION, SHA256 and COMMIT together (docs/decisions.md, "GGUF reading and llama.cpp
# tools (issue 13)").
#
# Usage: tools/llama_cpp.sh PYTHON
#   LOWBIT_LLAMA_CPP_DIR  install folder (default $HOME/.cache/lowbit/llama.cpp-0c1e570)
#   LOWBIT_LLAMA_CPP_SRC  where the sdist is extracted (default: $LOWBIT_LLAMA_CPP_DIR/src)
#   JOBS                  parallel compile jobs (default 2)
# A stamp file makes a second run a no-op.
set -euo pipefail

PY=${1:-python3}
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
COMMIT=0c1e570
DIR=${LOWBIT_LLAMA_CPP_DIR:-$HOME/.cache/lowbit/llama.cpp-$COMMIT}
SRC=${LOWBIT_LLAMA_CPP_SRC:-$DIR/src}
JOBS=${JOBS:-2}
TOOLS="llama-quantize llama-imatrix llama-perplexity llama-completion llama-embedding"
# The stamp names the build's configuration too: a cache built before a change of flags
# is built again.
STAMP=$DIR/.built-$VERSION-noamx

if [ -f "$STAMP" ]; then
    echo "llama.cpp $COMMIT tools already built in $DIR/bin"
    exit 0
fi
mkdir -p "$DIR"

if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    echo "llama-cpp-python==$VERSION --hash=sha256:$SHA256" > "$TMP/req.txt"
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --require-hashes \
        -r "$TMP/req.txt" -d "$TMP"
    mkdir -p "$TMP/x"
    tar -xzf "$TMP/llama_cpp_python-$VERSION.tar.gz" -C "$TMP/x"
    mkdir -p "$(dirname "$SRC")"
    rm -rf "$SRC.partial"
    mv "$TMP/x/llama_cpp_python-$VERSION" "$SRC.partial"
    # Another build may have finished the extraction meanwhile: keep theirs.
    if [ -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then rm -rf "$SRC.partial"; else rm -rf "$SRC"; mv "$SRC.partial" "$SRC"; fi
fi

BUILD=$DIR/build
# No network code: this llama.cpp no longer links curl (LLAMA_CURL is deprecated, a no-op
# with a warning); its model downloads use OpenSSL, which is turned off.
# No AMX: on a CPU that advertises AMX inside a VM that does not grant the tile state
# (this machine: a Xeon under firecracker), -march=native's AMX kernels die with SIGILL at
# the first matrix product. Explicit -mno-amx-* win over -march=native in GCC.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$NO_AMX" \
    -DCMAKE_CXX_FLAGS="$NO_AMX" \
    -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_EXAMPLES=ON \
    -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_COMMON=ON
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target $TOOLS
# llama.cpp puts executables and shared libraries in build/bin (its RPATH points there):
# bin/ and lib/ of the install folder are links to it.
ln -sfn build/bin "$DIR/bin"
ln -sfn build/bin "$DIR/lib"
for t in $TOOLS; do
    [ -x "$DIR/bin/$t" ] || { echo "error: $t was not built in $DIR/bin" >&2; exit 1; }
done
[ -e "$DIR/lib/libggml-base.so" ] || { echo "error: libggml-base.so missing in $DIR/lib" >&2; exit 1; }
echo "$COMMIT $VERSION" > "$STAMP"
echo "llama.cpp $COMMIT tools built in $DIR/bin (libraries in $DIR/lib)"
