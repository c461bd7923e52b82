#!/usr/bin/env bash
# `make sanitize`: pulse.source._wire built with AddressSanitizer and
# UndefinedBehaviorSanitizer, and the decoder tests run against that build.
#
# - The build goes to build/sanitize/ (a copy of src/pulse with the sanitized
#   extension in it), put first on PYTHONPATH: the venv's own build is untouched.
# - Python itself is not instrumented, so libasan is preloaded (it must be
#   the first library loaded); leak detection is off (the interpreter keeps
#   memory at exit on purpose), every UBSan finding is fatal.
# - Missing gcc or sanitizer runtimes are installed with apt-get (Debian).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=build/sanitize
CC=${CC:-gcc}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

have_runtimes() {
    command -v "$CC" >/dev/null 2>&1 || return 1
    local lib
    for lib in libasan.so libubsan.so; do
        [ -e "$("$CC" -print-file-name="$lib")" ] || return 1
    done
}

if ! have_runtimes; then
    echo "sanitize: installing gcc and the ASAN / UBSan runtimes (apt-get)"
    as_root apt-get update -qq
    # bookworm: gcc is gcc-12, whose libgcc-12-dev carries libasan.so / libubsan.so.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev libasan8 libubsan1 >/dev/null
    have_runtimes || { echo "sanitize: no sanitizer runtimes for $CC after apt-get" >&2; exit 1; }
fi

INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -e "$INCLUDE/Python.h" ]; then
    echo "sanitize: installing the Python headers (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dev >/dev/null
    [ -e "$INCLUDE/Python.h" ] || { echo "sanitize: no Python.h in $INCLUDE" >&2; exit 1; }
fi
SUFFIX=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

rm -rf "$OUT"
mkdir -p "$OUT"
cp -r src/pulse "$OUT/pulse"
find "$OUT/pulse" \( -name '_wire*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
SO="$OUT/pulse/source/_wire$SUFFIX"
"$CC" -shared -fPIC -std=c11 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-cast-function-type \
    -I"$INCLUDE" src/pulse/source/_wire.c -o "$SO"
echo "sanitize: built $SO ($("$CC" -dumpfullversion), -fsanitize=address,undefined)"

export PYTHONPATH="$PWD/$OUT${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$("$CC" -print-file-name=libasan.so)"
# A finding ends the process with exit code 86; pytest captures sys.stdout / sys.stderr
# only (--capture=sys), so the report, written to fd 2, is not lost with the process.
export ASAN_OPTIONS="detect_leaks=0:exitcode=86:check_initialization_order=1:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=86"
export PYTHONDONTWRITEBYTECODE=1

# The tests must import this build, not the venv's.
loaded=$("$PY" -c 'import pulse.source._wire as w; print(w.__file__)')
[ "$loaded" = "$PWD/$SO" ] || { echo "sanitize: imported $loaded instead of $PWD/$SO" >&2; exit 1; }
case "$(nm -D "$SO")" in *" U __asan_"*) ;; *) echo "sanitize: $SO is not instrumented" >&2; exit 1 ;; esac

status=0
"$PY" -m pytest -q -p no:cacheprovider --capture=sys \
    tests/unit/source/test_native.py tests/unit/source/test_decoder_fuzz.py "$@" || status=$?
case $status in
    0) echo "sanitize: passed: no ASAN or UBSan report (a finding ends the run with exit code 86)" ;;
    86) echo "sanitize: FAILED: an ASAN or UBSan report above" >&2 ;;
    *) echo "sanitize: FAILED: the tests failed (exit $status)" >&2 ;;
esac
exit "$status"
