"""``python -m devtools.graphsim --port N [--host 127.0.0.1] [--state-dir DIR] [--verbose]``.

Prints ``graphsim ready https://127.0.0.1:N ca=PATH`` once listening; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from devtools.graphsim.server import GraphSim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.graphsim", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--state-dir", default=None, help="where ca.pem is written (default: a temp dir)")
    parser.add_argument("--verbose", action="store_true", help="log method, path and status of each request")
    args = parser.parse_args(argv)
    try:
        sim = GraphSim(host=args.host, port=args.port, state_dir=args.state_dir, verbose=args.verbose)
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with sim:
        print(f"graphsim ready {sim.authority_host} ca={sim.ca_path}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
