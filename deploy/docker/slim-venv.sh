#!/bin/sh
# Shrink the runtime virtualenv to what the service loads at run time.
# Runs in the Dockerfile's builder stage (which has binutils); the runtime
# stage copies the result. Every removal here is something no import or
# forward pass of the service touches; the build re-checks that afterwards
# (deploy/docker/warm_imports.py runs a forward pass on the slimmed venv).
#
#   slim-venv.sh VENV STRIP(0|1)
set -eu
venv="$1"
strip_symbols="${2:-1}"
sp="$(echo "${venv}"/lib/python3*/site-packages)"
before="$(du -sm "${venv}" | cut -f1)"

# Installers: the runtime installs nothing (and has no compilers either).
"${venv}/bin/python" -m pip uninstall -y -q pip setuptools wheel 2>/dev/null || true
rm -f "${venv}"/bin/pip*

# torch: C++ headers and CMake files (only for building extensions), C++ test
# binaries and test-only libraries, protoc; keep torch_shm_manager.
rm -rf "${sp}/torch/include" "${sp}/torch/share" "${sp}/torch/test"
find "${sp}/torch/bin" -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} +
rm -f "${sp}"/torch/lib/libjitbackend_test.so "${sp}"/torch/lib/libtorchbind_test.so \
    "${sp}"/torch/lib/libbackend_with_compiler.so "${sp}"/torch/lib/libaoti_custom_ops.so

# Test suites that wheels ship (numpy, sympy, networkx, ...); never imported.
find "${sp}" -depth -type d -name tests -exec rm -rf {} +
# Type stubs are for type checkers only.
find "${sp}" -name '*.pyi' -delete

# Most wheels ship their shared libraries with full symbol tables (.symtab:
# ~100 MB in torch alone); the dynamic symbols the loader needs (.dynsym) stay.
# Packages repaired by auditwheel (those with a sibling <pkg>.libs folder) are
# left alone: stripping patchelf-edited files can corrupt them; so are the
# CUDA libraries and compilers of the CUDA variant (nvidia-*, triton).
if [ "${strip_symbols}" = 1 ]; then
    for pkg in "${sp}"/*/; do
        pkg="${pkg%/}"
        case "${pkg##*/}" in *.libs | *.dist-info | nvidia | triton) continue ;; esac
        [ -d "${pkg}.libs" ] && continue
        find "${pkg}" -type f \( -name '*.so' -o -name '*.so.*' -o -name torch_shm_manager \) \
            -exec strip --strip-unneeded {} +
    done
fi

# Byte code is written back by warm_imports.py for just the modules the
# service imports (the runtime root filesystem is read-only).
find "${sp}" -depth -type d -name __pycache__ -exec rm -rf {} +

echo "slim-venv: ${before} MB -> $(du -sm "${venv}" | cut -f1) MB" >&2
