#!/usr/bin/env bash
# CML Application launcher for sealserve.
#
# CML gives every Application a port in CDSW_APP_PORT and proxies the Application's URL to
# 127.0.0.1:$CDSW_APP_PORT inside the container. serve already binds exactly that when
# CDSW_APP_PORT is set and no port is given, so this script passes neither --host nor --port.
# Every other setting comes from the environment (SEALSERVE_*), which CML sets from the
# project's and the Application's environment variables.
set -euo pipefail

SERVE=/usr/local/bin/serve

if [[ -z "${CDSW_APP_PORT:-}" ]]; then
  echo "launch-app: CDSW_APP_PORT is not set; run this as a CML Application" >&2
  exit 64
fi
if [[ ! -x "$SERVE" ]]; then
  echo "launch-app: $SERVE not found; start the Application with the 'sealserve GPU' runtime" >&2
  exit 69
fi

# serve reads HOST and PORT as --host/--port; a stray project variable of either name would
# override the 127.0.0.1:$CDSW_APP_PORT default and CML's proxy could not reach the server.
unset HOST PORT

echo "launch-app: starting $SERVE on 127.0.0.1:${CDSW_APP_PORT}" >&2
exec "$SERVE" "$@"
