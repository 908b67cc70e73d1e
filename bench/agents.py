"""Zero-latency agents for bench/engine.py, loaded as a plug-in module (HIL_AGENT_MODULES=bench.agents).

The plain functions are also the bodies of the LangGraph nodes, so both systems do the same agent work
and the benchmark measures only the engines.
"""

from agents.registry import StepContext, register

# Order 42 is recent (refundable), order 43 is not: half of the runs end in each sink.
ORDERS = {42: {"order_id": 42, "total": 19.9, "age_days": 5}, 43: {"order_id": 43, "total": 99.0, "age_days": 90}}
REFUND_WINDOW_DAYS = 30


def classify(text: str) -> dict:
    return {"intent": "refund" if "refund" in text else "other", "order_id": int(text.rsplit(" ", 1)[-1])}


def fetch_order(classification: dict) -> dict:
    return ORDERS.get(classification["order_id"], {"order_id": classification["order_id"], "found": False})


def check_eligibility(order: dict) -> dict:
    eligible = order.get("age_days", REFUND_WINDOW_DAYS + 1) <= REFUND_WINDOW_DAYS
    return {"eligible": eligible, "reason": "" if eligible else "outside the refund window"}


def respond(order: dict) -> dict:
    return {"reply": f"Your refund of {order['total']} for order {order['order_id']} is on its way."}


@register("bench_classify")
def classify_agent(ctx: StepContext) -> dict:
    return classify(ctx.state["input"]["text"])


@register("bench_fetch_order")
def fetch_order_agent(ctx: StepContext) -> dict:
    return fetch_order(ctx.state["classify"])


@register("bench_check_eligibility")
def check_eligibility_agent(ctx: StepContext) -> dict:
    return check_eligibility(ctx.state["fetch_order"])


@register("bench_respond")
def respond_agent(ctx: StepContext) -> dict:
    return respond(ctx.state["fetch_order"])
