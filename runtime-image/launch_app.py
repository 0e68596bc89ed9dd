"""CML Application entry point for sealserve.

CML runs an Application's script with the runtime's kernel (Python 3.10 on the
"sealserve GPU" PBJ runtime), so the AMP points here. This hands over to
launch-app.sh, which execs /usr/local/bin/serve; serve binds
127.0.0.1:$CDSW_APP_PORT by itself. The copy baked into the runtime image is
preferred over the one in the project, which project members can edit.
The server runs as a child so the kernel stays alive; SIGTERM and SIGINT from
CML are forwarded and the server's exit status is passed on.
"""

import os
import signal
import subprocess
import sys


def _launcher():
    candidates = ["/usr/local/bin/sealserve-launch-app"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        candidates.append(os.path.join(here, "launch-app.sh"))
    except NameError:  # a kernel that runs the script without setting __file__
        pass
    candidates.append(os.path.join(os.getcwd(), "runtime-image", "launch-app.sh"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    sys.exit("launch-app.sh not found: is this the sealserve GPU runtime?")


child = subprocess.Popen(["/bin/bash", _launcher()])


def _forward(signum, _frame):
    child.send_signal(signum)


for _signal in (signal.SIGTERM, signal.SIGINT):
    try:
        signal.signal(_signal, _forward)
    except ValueError:  # not the main thread: CML stops the container instead
        pass

_code = child.wait()
if _code != 0:
    sys.exit(_code)
