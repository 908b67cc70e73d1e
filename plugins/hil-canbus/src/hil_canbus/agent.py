"""The `can_decode` agent: a vehicle's CAN frames, taken from the run state, decoded into signal values.

    - id: decode
      agent: can_decode
      config:
        input: telemetry.frames          # JMESPath: a list of {id, data: hex}
        strict: true                     # a malformed frame or an unknown id fails the node (default: skipped)
        frames:
          - id: 0x0CF00400               # J1939 EEC1
            name: EEC1
            signals:
              - {name: engine_speed, start: 24, length: 16, scale: 0.125, unit: rpm}

Output: `frames`, one {id, name, signals: {name: value}, units: {name: unit}} per decoded frame, in
input order; `skipped`, one {index, reason} per frame left out (never any when strict).
"""

from agents.registry import StepContext, StepFailure, register
from core.expressions import evaluate

from .dbc import DecodeError, decode_frame, format_id

SIGNAL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "start", "length"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "start": {"type": "integer", "minimum": 0, "maximum": 511},  # up to CAN FD's 64 bytes
        "length": {"type": "integer", "minimum": 1, "maximum": 64},
        "byte_order": {"enum": ["little_endian", "big_endian"]},  # default little_endian, as in J1939
        "signed": {"type": "boolean"},
        "scale": {"type": "number"},
        "offset": {"type": "number"},
        "unit": {"type": "string"},
    },
}
CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["input", "frames"],
    "properties": {
        "input": {"type": "string", "format": "jmespath"},
        "strict": {"type": "boolean"},
        "frames": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "signals"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 0x1FFFFFFF},  # 11- or 29-bit
                    "name": {"type": "string"},
                    "signals": {"type": "array", "minItems": 1, "items": SIGNAL},
                },
            },
        },
    },
}


@register("can_decode", config_schema=CONFIG_SCHEMA)
def can_decode(ctx: StepContext) -> dict:
    table = _table(ctx.config["frames"])
    frames = evaluate(ctx.config["input"], ctx.state)
    if not isinstance(frames, list):
        raise StepFailure(f"input {ctx.config['input']!r} gave {type(frames).__name__}, not a list of frames")
    decoded, skipped = [], []
    for index, frame in enumerate(frames):
        try:
            decoded.append(decode_frame(frame, table))
        except DecodeError as e:
            if ctx.config.get("strict", False):
                raise StepFailure(f"frame {index}: {e}") from None
            skipped.append({"index": index, "reason": str(e)})
    return {"frames": decoded, "skipped": skipped}


def _table(frames: list[dict]) -> dict[int, dict]:
    """The signal table by frame id. The spec validator checked its shape; what a JSON Schema cannot say
    (ids and signal names each used once) fails the node, as retrying would not help."""
    table = {}
    for frame in frames:
        if frame["id"] in table:
            raise StepFailure(f"frame id {format_id(frame['id'])} is in the signal table twice")
        names = [s["name"] for s in frame["signals"]]
        if len(set(names)) < len(names):
            raise StepFailure(f"frame {format_id(frame['id'])} names a signal twice: {names}")
        table[frame["id"]] = frame
    return table
