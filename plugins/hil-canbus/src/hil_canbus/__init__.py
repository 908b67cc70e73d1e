"""CAN-bus frames for HIL: `dbc` decodes them (plain Python), `agent` is the `can_decode` agent."""
