#!/bin/sh
# Import the cookiebaker workflow (n8n/cookiebaker.json) and the credential its chat models use
# (n8n/credentials.json: cookiebaker's Ollama-compatible API) into n8n, and publish the workflow.
#
#   COOKIEBAKER_URL      where n8n reaches `cookiebaker serve` (default http://cookiebaker:8000, the compose service)
#   COOKIEBAKER_API_KEY  the key cookiebaker was started with (empty: none)
#   N8N                  the n8n command (default: n8n; `make n8n` installs .n8n/n8n)
#
# n8n reads published workflows when it starts: run this while n8n is stopped, or restart n8n afterwards.
# Importing again replaces the workflow and the credential (same ids).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
n8n=${N8N:-n8n}
url=${COOKIEBAKER_URL:-http://cookiebaker:8000}
key=${COOKIEBAKER_API_KEY:-}
case "$url$key" in
  *'"'*|*'\'*|*'#'*) echo "import.sh: COOKIEBAKER_URL and COOKIEBAKER_API_KEY must not contain \", \\ or #" >&2; exit 2 ;;
esac
credentials=$(mktemp)
trap 'rm -f "$credentials"' EXIT
sed -e "s#@COOKIEBAKER_URL@#$url#" -e "s#@COOKIEBAKER_API_KEY@#$key#" "$here/credentials.json" > "$credentials"
$n8n import:credentials --input="$credentials"
$n8n import:workflow --input="$here/cookiebaker.json"
$n8n publish:workflow --id=cookiebakerResponder
