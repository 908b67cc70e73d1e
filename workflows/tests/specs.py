"""Small workflow specs that several test modules share."""

LINEAR = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {x: 1}}}
  - {id: b, agent: responder, config: {template: "x is {{ a.x }}"}}
edges:
  - {from: a, to: b}
  - {from: b, to: FINISH}
"""

# One step, then a human: a handover ticket to work with.
HANDS = """
entry: a
nodes:
  - {id: a, agent: test_echo, config: {output: {x: 1}}}
edges:
  - {from: a, to: HANDOVER}
"""
