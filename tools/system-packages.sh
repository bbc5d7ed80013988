#!/bin/sh
# The system tools cookiebaker needs, by purpose; installs the missing ones (Debian/Ubuntu, as root) or names them.
#   tools/system-packages.sh build   what `make setup` needs: a C++ compiler and cmake (llama-cpp-python builds from
#                                    source)
#   tools/system-packages.sh test    also what the test suite uses: git (DVC), docker-compose (validates
#                                    docker-compose.yml offline), npm (`make n8n`: Node 24 and n8n for the live
#                                    workflow test), pgrep (procps), PostgreSQL's server (history killed with -9)
set -eu
purpose=${1:-test}
missing=""
need() {  # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need g++ g++
need cmake cmake
if [ "$purpose" = test ]; then
  need git git
  need docker-compose docker-compose
  need npm npm
  need pgrep procps
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the system packages cookiebaker's $purpose needs:$missing"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  exit 0
fi
echo "cookiebaker's $purpose needs these system packages:$missing" >&2
echo "install them (Debian/Ubuntu: sudo apt-get install$missing) and run make again" >&2
exit 1
