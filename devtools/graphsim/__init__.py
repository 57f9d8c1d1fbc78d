"""graphsim: a local stand-in for Microsoft Graph v1.0 (calendars) and the Microsoft identity platform.

Development and test tool only; not part of the production package ``sync_core``. See README.md.
"""

from devtools.graphsim.server import GraphSim

__all__ = ["GraphSim"]
