"""Decoding CAN frames with a DBC-like signal table: the bit layout of DBC signals and their linear
scaling, no more (no multiplexed signals, value tables or IEEE float signals).

Bits are numbered as in a DBC file: bit `n` is bit `n % 8` (0 the least significant) of byte `n // 8`.
A little-endian (Intel, `@1`) signal's `start` is its least significant bit and it runs up through the
following bytes; a big-endian (Motorola, `@0`) signal's `start` is its most significant bit and it runs
down its byte, then on from bit 7 of the next one. So `start` and `length` copy over from a .dbc file.
"""

from typing import Any

Signal = dict[str, Any]  # {name, start, length, byte_order, signed, scale, offset, unit}, as in the agent's config


class DecodeError(ValueError):
    """A frame that cannot be decoded: its id or data is malformed, or too short for a signal."""


class UnknownFrame(DecodeError):
    """A frame whose id the signal table does not have."""


def parse_id(value) -> int:
    """A frame id: an integer, or hex text as candump prints it ("18FEF100", "0x18FEF100")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise DecodeError(f"id {value!r} is not an integer or hex text")


def parse_data(value) -> bytes:
    """A frame's payload from hex text ("F07D7D401F00FFFF"; spaces between bytes and a 0x prefix are fine)."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            pass
    raise DecodeError(f"data {value!r} is not hex bytes")


def raw_value(data: bytes, signal: Signal) -> int:
    """The signal's raw bits as an integer (two's complement when `signed`)."""
    start, length = signal["start"], signal["length"]
    little = signal.get("byte_order", "little_endian") == "little_endian"
    # Where the signal ends, counting bits from the first byte's bit 0 up (little endian) or bit 7 down (big).
    end = start + length if little else 8 * (start // 8) + 7 - start % 8 + length
    if end > 8 * len(data):
        raise DecodeError(f"signal {signal['name']!r} needs {-(-end // 8)} bytes, the frame has {len(data)}")
    if little:
        raw = int.from_bytes(data, "little") >> start
    else:
        raw = int.from_bytes(data, "big") >> (8 * len(data) - end)
    raw &= (1 << length) - 1
    if signal.get("signed", False) and raw >> (length - 1):
        raw -= 1 << length
    return raw


def physical_value(data: bytes, signal: Signal) -> int | float:
    """raw × scale + offset: an int when both are integers, as DBC tools show it."""
    return raw_value(data, signal) * signal.get("scale", 1) + signal.get("offset", 0)


def format_id(frame_id: int) -> str:
    """0x0CF00400 for an extended (29-bit) id, 0x123 for a standard one."""
    return f"0x{frame_id:08X}" if frame_id > 0x7FF else f"0x{frame_id:03X}"


def decode_frame(frame, table: dict[int, dict]) -> dict:
    """One frame {id, data} decoded with the table's entry for its id: {id, name, signals, units}.
    Raises DecodeError for a malformed frame, UnknownFrame for an id the table does not have."""
    if not isinstance(frame, dict) or "id" not in frame or "data" not in frame:
        raise DecodeError(f"{frame!r} is not a frame {{id, data}}")
    frame_id = parse_id(frame["id"])
    if frame_id not in table:
        raise UnknownFrame(f"id {format_id(frame_id)} is not in the signal table")
    entry = table[frame_id]
    try:
        data = parse_data(frame["data"])
        values = {s["name"]: physical_value(data, s) for s in entry["signals"]}
    except DecodeError as e:
        raise DecodeError(f"{e} (id {format_id(frame_id)})") from None
    return {"id": format_id(frame_id), "name": entry.get("name", format_id(frame_id)), "signals": values,
            "units": {s["name"]: s["unit"] for s in entry["signals"] if "unit" in s}}
