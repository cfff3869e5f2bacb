# Sourced by the other scripts: PY is the Python kdlab is installed into, ${PYTHON:-python3},
# or the .venv install.sh makes beside it when that Python refuses pip (PEP 668, e.g.
# Debian's system Python).
PY=${PYTHON:-python3}
externally_managed() {
    "$1" -c 'import pathlib, sys, sysconfig
managed = pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'
}
if externally_managed "$PY" && [ -x .venv/bin/python ] \
    && .venv/bin/python -m pip --version >/dev/null 2>&1; then
    PY=$PWD/.venv/bin/python
fi
