"""Function calling, the whole round trip: the model asks for a tool, we run it here (a fixed weather
table and a calculator, so it works offline and gives the same result every time), send the result
back, and print the model's final answer. --style functions uses the legacy `functions` field."""
from __future__ import annotations

import ast
import json
import operator

from client.common import connect, parser, run

WEATHER = {"paris": "sunny, 22 °C", "beijing": "cloudy, 18 °C", "london": "light rain, 14 °C",
           "shanghai": "humid, 27 °C", "new york": "clear, 19 °C", "北京": "cloudy, 18 °C"}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "calculate", "description": "Evaluate an arithmetic expression such as 12*(3+4).",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
]
SYSTEM = ("You are a helpful assistant. When a tool result is given, answer the user's question in plain "
          "words using it; do not call the tool again.")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Mod: operator.mod}


def _eval(node: ast.AST) -> float:
    # Arithmetic only: a model-written expression must never reach eval().
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
        return OPS[type(node.op)](_eval(node.operand))
    raise ValueError("only numbers and + - * / % ** are allowed")


def call_tool(name: str, arguments: str) -> str:
    try:
        args = json.loads(arguments or "{}")
        if name == "get_weather":
            city = str(args.get("city", "")).strip()
            return json.dumps({"city": city, "weather": WEATHER.get(city.lower(), "unknown city")}, ensure_ascii=False)
        if name == "calculate":
            return json.dumps({"result": _eval(ast.parse(str(args["expression"]), mode="eval").body)})
    except (ValueError, KeyError, SyntaxError, ZeroDivisionError, TypeError, OverflowError) as e:
        return json.dumps({"error": str(e)})
    return json.dumps({"error": f"no tool named {name}"})


def main() -> None:
    p = parser(__doc__, "What's the weather like in Paris today?")
    p.add_argument("--style", choices=["tools", "functions"], default="tools")
    p.add_argument("--tools", default="get_weather,calculate",
                   help="comma-separated tools to offer; fewer tools make a shorter prompt")
    args = p.parse_args()
    offered = [t for t in TOOLS if t["function"]["name"] in args.tools.split(",")]
    if not offered:
        p.error(f"--tools {args.tools}: choose from get_weather, calculate")
    client, model = connect(args)
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": args.prompt}]
    offer = {"tools": offered} if args.style == "tools" else {"functions": [t["function"] for t in offered]}
    print(f"user: {args.prompt}")
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                           temperature=args.temperature, **offer)
    msg = reply.choices[0].message
    calls = [(c.id, c.function) for c in msg.tool_calls or []]
    if msg.function_call:
        calls.append((None, msg.function_call))
    if not calls:
        print(f"assistant (no tool call): {msg.content}")
        return
    messages.append(msg.model_dump(exclude_none=True))
    for call_id, fn in calls:
        result = call_tool(fn.name, fn.arguments)
        print(f"tool call: {fn.name}({fn.arguments}) -> {result}")
        if call_id is None:
            messages.append({"role": "function", "name": fn.name, "content": result})
        else:
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    # Small models tend to repeat the call they just made; with the results in hand, ask for the answer.
    final = {"tool_choice": "none"} if args.style == "tools" else {"function_call": "none"}
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=args.max_tokens,
                                           temperature=args.temperature, **offer, **final)
    print(f"assistant: {reply.choices[0].message.content}")

if __name__ == "__main__":
    run(main)
