"""Decoding signals out of frames, checked against values worked out by hand from the J1939 layouts."""

import pytest

from hil_canbus.dbc import DecodeError, UnknownFrame, decode_frame, parse_id, raw_value

# J1939 EEC1 (PGN 61444) from the engine, source address 0: bytes 4-5 (bits 24-39) engine speed, 0.125 rpm/bit,
# little endian; byte 3 actual engine torque, 1 %/bit from -125 %.
EEC1 = {"id": 0x0CF00400, "name": "EEC1", "signals": [
    {"name": "engine_speed", "start": 24, "length": 16, "scale": 0.125, "unit": "rpm"},
    {"name": "torque", "start": 16, "length": 8, "offset": -125, "unit": "%"},
]}
# J1939 CCVS (PGN 65265), source address 0: bytes 2-3 (bits 8-23) wheel-based vehicle speed, 1/256 km/h per bit.
CCVS = {"id": 0x18FEF100, "name": "CCVS", "signals": [
    {"name": "speed", "start": 8, "length": 16, "byte_order": "little_endian", "scale": 1 / 256, "unit": "km/h"},
]}
TABLE = {EEC1["id"]: EEC1, CCVS["id"]: CCVS}


def signal(start, length, byte_order="little_endian", signed=False):
    return {"name": "s", "start": start, "length": length, "byte_order": byte_order, "signed": signed}


@pytest.mark.parametrize("data,rpm,torque", [
    ("F07D7D401F00FFFF", 1000.0, 0),  # 0x1F40 = 8000 × 0.125; 0x7D = 125 - 125
    ("F07D8AD43900FFFF", 1850.5, 13),  # 0x39D4 = 14804 × 0.125; 0x8A = 138 - 125
    ("FFFF00000000FFFF", 0.0, -125),
])
def test_engine_speed_and_torque_from_eec1(data, rpm, torque):
    decoded = decode_frame({"id": 0x0CF00400, "data": data}, TABLE)
    assert decoded == {"id": "0x0CF00400", "name": "EEC1", "signals": {"engine_speed": rpm, "torque": torque},
                       "units": {"engine_speed": "rpm", "torque": "%"}}


@pytest.mark.parametrize("data,kmh", [
    ("FF0050FFFFFFFFFF", 80.0),  # 0x5000 = 20480 / 256
    ("FF8034FFFFFFFFFF", 52.5),  # 0x3480 = 13440 / 256
    ("FF0100FFFFFFFFFF", 1 / 256),
])
def test_vehicle_speed_from_ccvs(data, kmh):
    assert decode_frame({"id": "18FEF100", "data": data}, TABLE)["signals"] == {"speed": kmh}


@pytest.mark.parametrize("data,sig,raw", [
    ("1234", signal(7, 16, "big_endian"), 0x1234),  # Motorola: MSB at byte 0 bit 7, on into byte 1
    ("1234", signal(3, 12, "big_endian"), 0x234),  # byte 0 bits 3..0, then all of byte 1
    ("ABCDEF", signal(13, 10, "big_endian"), 0b0011011110),  # byte 1 bits 5..0 (001101), byte 2 bits 7..4 (1110)
    ("1234", signal(0, 16), 0x3412),  # Intel: byte 0 is the low byte
    ("1234", signal(4, 12), 0x341),  # 0x3412 >> 4
    ("1234", signal(12, 4), 0x3),  # the high nibble of byte 1
    ("FF", signal(0, 8), 255),
    ("FF", signal(0, 8, signed=True), -1),
    ("80", signal(0, 8, signed=True), -128),
    ("7F", signal(0, 8, signed=True), 127),
    ("0080", signal(7, 12, "big_endian", signed=True), 8),  # 0000 0000 1000
    ("F000", signal(7, 12, "big_endian", signed=True), -256),  # 1111 0000 0000 = 0xF00 - 0x1000
])
def test_bit_layouts(data, sig, raw):
    assert raw_value(bytes.fromhex(data), sig) == raw


def test_a_signal_past_the_end_of_the_frame_is_an_error_naming_both():
    with pytest.raises(DecodeError, match=r"signal 'engine_speed' needs 5 bytes, the frame has 4 \(id 0x0CF00400\)"):
        decode_frame({"id": 0x0CF00400, "data": "F07D7D40"}, TABLE)


@pytest.mark.parametrize("frame,message", [
    ({"id": 0x0CF00400, "data": "F07D7D4G1F00FFFF"}, "data 'F07D7D4G1F00FFFF' is not hex bytes (id 0x0CF00400)"),
    ({"id": 0x0CF00400, "data": "F07"}, "data 'F07' is not hex bytes"),
    ({"id": 0x0CF00400, "data": 17}, "data 17 is not hex bytes"),
    ({"id": "engine", "data": "00"}, "id 'engine' is not an integer or hex text"),
    ({"data": "00"}, "is not a frame {id, data}"),
    ("0CF00400#F07D7D401F00FFFF", "is not a frame {id, data}"),
])
def test_a_malformed_frame_is_an_error_saying_what_is_wrong(frame, message):
    with pytest.raises(DecodeError) as error:
        decode_frame(frame, TABLE)
    assert message in str(error.value) and not isinstance(error.value, UnknownFrame)


def test_an_id_not_in_the_table():
    with pytest.raises(UnknownFrame, match=r"id 0x18FEEE00 is not in the signal table"):
        decode_frame({"id": 0x18FEEE00, "data": "00"}, TABLE)
    with pytest.raises(UnknownFrame, match=r"id 0x123 is not in the signal table"):
        decode_frame({"id": "0x123", "data": "00"}, TABLE)


def test_ids_as_candump_prints_them():
    assert parse_id("18FEF100") == parse_id("0x18FEF100") == parse_id(0x18FEF100) == 419361024
