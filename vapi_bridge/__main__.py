"""Allow ``python -m vapi_bridge``."""

from vapi_bridge.cli import main

main()
