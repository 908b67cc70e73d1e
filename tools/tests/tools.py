"""Built-in tools for the tests, declared as a plug-in would declare its own."""

from tools.contracts import builtin
from tools.models import Risk

made: list[tuple[str, dict, str]] = []  # (tool, args, key) of every call made in this process

PAY = {"type": "object", "additionalProperties": False, "required": ["amount", "to"],
       "properties": {"amount": {"type": "number", "minimum": 0}, "to": {"type": "string"}}}


@builtin("test.noop", input_schema={"type": "object"}, risk=Risk.READ)
def noop(args: dict, key: str) -> dict:
    """Does nothing and says so."""
    return {"ok": True}


@builtin("test.pay", input_schema=PAY, risk=Risk.WRITE, cost_usd="0.01",
         output_schema={"type": "object", "required": ["paid"], "properties": {"paid": {"type": "number"}}},
         preview=lambda args: {"will": f"pay {args['amount']} to {args['to']}"})
def pay(args: dict, key: str) -> dict:
    """Pays someone."""
    made.append(("test.pay", args, key))
    return {"paid": args["amount"], "to": args["to"]}


@builtin("test.wipe", input_schema={"type": "object"}, risk=Risk.DESTRUCTIVE)
def wipe(args: dict, key: str) -> dict:
    """Deletes everything."""
    made.append(("test.wipe", args, key))
    return {"wiped": True}


@builtin("test.bad_output", input_schema={"type": "object"}, risk=Risk.READ,
         output_schema={"type": "object", "required": ["answer"]})
def bad_output(args: dict, key: str) -> dict:
    return {"something": "else"}


@builtin("test.profile", input_schema={"type": "object", "required": ["customer"],
                                       "properties": {"customer": {"type": "integer"}}}, risk=Risk.READ)
def profile(args: dict, key: str) -> dict:
    """A customer's profile, personal data included."""
    return {"name": "Ada Lovelace", "email": "ada.lovelace@example.com", "phone": "+44 20 7946 0958",
            "card": "4111 1111 1111 1111", "note": f"customer {args['customer']}"}
