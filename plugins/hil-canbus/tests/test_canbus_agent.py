"""The `can_decode` agent on a truck's frames: what a workflow gets in its run state, and when the node fails."""

import pytest

from agents.registry import StepContext, StepFailure
from hil_canbus.agent import can_decode

SIGNALS = [
    {"id": 0x0CF00400, "name": "EEC1", "signals": [
        {"name": "engine_speed", "start": 24, "length": 16, "scale": 0.125, "unit": "rpm"}]},
    {"id": 0x18FEF100, "name": "CCVS", "signals": [
        {"name": "speed", "start": 8, "length": 16, "scale": 0.00390625, "unit": "km/h"}]},
]
TELEMETRY = {"frames": [
    {"id": 0x0CF00400, "data": "F07D7D401F00FFFF"},
    {"id": "18FEF100", "data": "FF0050FFFFFFFFFF"},
    {"id": 0x18FEEE00, "data": "7D0000FFFFFFFFFF"},  # ET1, engine temperature: not in the table
    {"id": 0x0CF00400, "data": "F07D8AD43900FFFF"},
]}


def decode(frames=TELEMETRY, strict=None, table=SIGNALS):
    config = {"input": "telemetry.frames", "frames": table} | ({} if strict is None else {"strict": strict})
    ctx = StepContext(tenant_id=1, run_id="run", node_id="decode", attempt=1, config=config,
                      state={"input": {"text": "how is truck 7?"}, "telemetry": frames})
    return can_decode(ctx)


def test_frames_are_decoded_in_order_and_unknown_ids_skipped():
    output = decode()
    assert [(f["name"], f["signals"]) for f in output["frames"]] == [
        ("EEC1", {"engine_speed": 1000.0}), ("CCVS", {"speed": 80.0}), ("EEC1", {"engine_speed": 1850.5})]
    assert output["frames"][1] == {"id": "0x18FEF100", "name": "CCVS", "signals": {"speed": 80.0},
                                   "units": {"speed": "km/h"}}
    assert output["skipped"] == [{"index": 2, "reason": "id 0x18FEEE00 is not in the signal table"}]


def test_strict_fails_the_node_on_an_unknown_id():
    with pytest.raises(StepFailure, match=r"^frame 2: id 0x18FEEE00 is not in the signal table$"):
        decode(strict=True)


def test_malformed_hex_is_skipped_or_fails_the_node_when_strict():
    frames = {"frames": [{"id": 0x0CF00400, "data": "F07D7D40ZZ00FFFF"}, {"id": 0x18FEF100, "data": "FF0050FFFFFFFFFF"}]}
    output = decode(frames)
    assert output["skipped"] == [{"index": 0, "reason": "data 'F07D7D40ZZ00FFFF' is not hex bytes (id 0x0CF00400)"}]
    assert [f["signals"] for f in output["frames"]] == [{"speed": 80.0}]
    with pytest.raises(StepFailure, match=r"^frame 0: data 'F07D7D40ZZ00FFFF' is not hex bytes \(id 0x0CF00400\)$"):
        decode(frames, strict=True)


def test_a_short_frame_fails_the_node_when_strict():
    with pytest.raises(StepFailure, match=r"frame 0: signal 'engine_speed' needs 5 bytes, the frame has 3"):
        decode({"frames": [{"id": 0x0CF00400, "data": "F07D7D"}]}, strict=True)


def test_input_that_is_not_a_list_of_frames_fails_the_node():
    with pytest.raises(StepFailure, match=r"input 'telemetry.frames' gave NoneType, not a list of frames"):
        decode({"no_frames": []})


def test_a_table_with_an_id_twice_fails_the_node():
    with pytest.raises(StepFailure, match=r"frame id 0x0CF00400 is in the signal table twice"):
        decode(table=[*SIGNALS, SIGNALS[0]])
    twice = {"id": 0x123, "signals": [{"name": "a", "start": 0, "length": 8}, {"name": "a", "start": 8, "length": 8}]}
    with pytest.raises(StepFailure, match=r"frame 0x123 names a signal twice"):
        decode(table=[twice])
