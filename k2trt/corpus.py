"""The k2-tiny corpus: seeded tool-use conversations in K2's chat format (OpenAI-shaped message lists).

Conversations are *data*, not text: each is the ``messages`` + ``tools`` a client would send, rendered by
:func:`k2trt.chat.render_chat` exactly as an inference prompt is, so training text == serving text byte for byte.
Kinds (see :data:`TRAIN_MIX`):

- one tool call (weather, time, calculator, unit conversion): the user asks, the assistant emits a K2 tool call
  whose JSON arguments are copied (city, number) or computed (``"17 times 23"`` -> ``"17 * 23"``, ``kilometers``
  -> ``"km"``) from the request, the tool returns, the assistant answers quoting the returned values;
- two calls in one section (two cities, weather and time), answered together;
- no call: greetings, "Please give a brief self-introduction.", small talk, general knowledge, with and without
  tools declared; and requests for a tool that is not declared (answered with an apology, no call);
- a few two-exchange conversations (call indices keep counting across the conversation, as K2's ids do).

The Kimi-K2 model card's own example (:func:`seed_example`: ``get_weather`` declared with the card's exact
schema, the card's system prompt and question) is the commonest weather shape, with many cities and values.

A *rich* training corpus (``training_conversations(rich=True)``) adds value shapes: made-up names and conditions
of several free words, more decimals and worded operators. ``declare`` sets how many tools a training conversation
declares beside the ones it needs (:data:`DECLARE_MODES`); ``announce`` has replies to tool requests name the
needed tool and whether it is declared before the call or the apology (:func:`announcement`); ``answers`` sets
where weather and time answers quote the value (:data:`ANSWER_ORDERS`); ``made_up_topics`` draws some chat topics
as made-up words (:func:`made_up_topic`); ``varied_chat`` rewords some tool-free user turns the way requests open
(:func:`varied_chat_user`).

Held out for evaluation only (``split="heldout"``): a list of real cities, city names from a different generator
seed, weather conditions/words, and every number drawn from a separate seed. Copying is learned from many
random synthetic names and values in training (made-up city names, made-up weather words), not memorised.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from k2trt.chat import DEFAULT_SYSTEM_PROMPT
from k2trt.errors import K2Error

SPLITS = ("train", "heldout")

# ----------------------------------------------------------------------------------------------- tools as data


@dataclass(frozen=True)
class Tool:
    """A function tool: its OpenAI declaration and a local implementation ``run(args, values) -> result``.

    ``values`` supplies what a real service would know (today's weather, the local time): the corpus draws them,
    and a client running the tool for real passes its own.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

    def declaration(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (key order as the model card writes it)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


UNITS: dict[str, tuple[str, str]] = {
    # code -> (singular word, plural word) as users write them
    "km": ("kilometer", "kilometers"),
    "mi": ("mile", "miles"),
    "kg": ("kilogram", "kilograms"),
    "lb": ("pound", "pounds"),
    "m": ("meter", "meters"),
    "ft": ("foot", "feet"),
    "l": ("liter", "liters"),
    "gal": ("gallon", "gallons"),
    "c": ("degree Celsius", "degrees Celsius"),
    "f": ("degree Fahrenheit", "degrees Fahrenheit"),
}
_UNIT_PAIRS = [("km", "mi"), ("kg", "lb"), ("m", "ft"), ("l", "gal"), ("c", "f")]
_FACTORS = {("km", "mi"): 0.621371, ("kg", "lb"): 2.20462, ("m", "ft"): 3.28084, ("l", "gal"): 0.264172}


def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``, rounded to 2 decimals (codes of :data:`UNITS`)."""
    if (from_unit, to_unit) == ("c", "f"):
        out = value * 9 / 5 + 32
    elif (from_unit, to_unit) == ("f", "c"):
        out = (value - 32) * 5 / 9
    elif (from_unit, to_unit) in _FACTORS:
        out = value * _FACTORS[from_unit, to_unit]
    elif (to_unit, from_unit) in _FACTORS:
        out = value / _FACTORS[to_unit, from_unit]
    else:
        raise K2Error(f"convert_units: cannot convert {from_unit!r} to {to_unit!r}")
    return round(out, 2)


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculate(expression: str) -> int | float:
    """Evaluate ``+ - * /`` and parentheses over numbers; integral results are ints, others rounded to 4 places."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise K2Error(f"calculate: unsupported expression {expression!r}")

    try:
        value = ev(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ZeroDivisionError) as e:
        raise K2Error(f"calculate: cannot evaluate {expression!r}: {e}") from None
    return int(value) if float(value).is_integer() else round(value, 4)


def _weather_result(args: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    out = {"weather": values["weather"]}
    if "temperature" in values:
        out["temperature"] = values["temperature"]
    return out


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        # The Kimi-K2 model card's tool, byte for byte (the demo sends exactly this declaration).
        Tool(
            name="get_weather",
            description="Retrieve current weather information. Call this when the user asks about the weather.",
            parameters={
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string", "description": "Name of the city"}},
            },
            run=_weather_result,
        ),
        Tool(
            name="get_time",
            description="Get the current local time in a city.",
            parameters={
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string", "description": "Name of the city"}},
            },
            run=lambda args, values: {"time": values["time"]},
        ),
        Tool(
            name="calculate",
            description="Evaluate an arithmetic expression with + - * / and parentheses.",
            parameters={
                "type": "object",
                "required": ["expression"],
                "properties": {"expression": {"type": "string", "description": "The expression, e.g. 2 * (3 + 4)"}},
            },
            run=lambda args, values: {"result": calculate(args["expression"])},
        ),
        Tool(
            name="convert_units",
            description="Convert a quantity from one unit to another.",
            parameters={
                "type": "object",
                "required": ["value", "from_unit", "to_unit"],
                "properties": {
                    "value": {"type": "number", "description": "The quantity to convert"},
                    "from_unit": {"type": "string", "enum": sorted(UNITS), "description": "Unit of the value"},
                    "to_unit": {"type": "string", "enum": sorted(UNITS), "description": "Unit wanted"},
                },
            },
            run=lambda args, values: {"result": convert_units(args["value"], args["from_unit"], args["to_unit"])},
        ),
    )
}
"""The tool family, by name. Results are JSON objects; the assistant's answer quotes every value."""

SEED_SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT
SEED_USER_MESSAGE = "What's the weather like in Beijing today? Let's check using the tool."


def card_get_weather(city: str) -> dict[str, str]:
    """The model card's local ``get_weather`` tool: ``{"weather": "Sunny"}`` for any city."""
    return {"weather": "Sunny"}


def seed_example() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Kimi-K2 model card's tool-calling example: ``(tools, messages)`` before the model's first turn.

    The card's local tool returns ``{"weather": "Sunny"}``; the client appends the assistant message, then
    ``{"role": "tool", "tool_call_id": ..., "name": "get_weather", "content": json.dumps(result)}``.
    """
    tools = [TOOLS["get_weather"].declaration()]
    messages = [{"role": "system", "content": SEED_SYSTEM_PROMPT}, {"role": "user", "content": SEED_USER_MESSAGE}]
    return tools, messages


# ----------------------------------------------------------------------------------------------- value pools

_TRAIN_CITIES = """
Beijing Shanghai Guangzhou Shenzhen Chengdu Wuhan Hangzhou Nanjing Tianjin Xi'an Chongqing Suzhou Harbin Kunming
Tokyo Osaka Kyoto Seoul Busan Taipei Singapore Bangkok Hanoi Manila Jakarta Mumbai Delhi Bangalore Karachi Dhaka
Dubai Doha Riyadh Tehran Istanbul Ankara Cairo Lagos Nairobi Johannesburg Casablanca Accra London Paris Berlin
Madrid Rome Milan Vienna Prague Warsaw Budapest Amsterdam Brussels Zurich Geneva Stockholm Oslo Copenhagen
Helsinki Dublin Lisbon Athens Moscow Kyiv Edinburgh Manchester Munich Hamburg Barcelona Seville Naples
Toronto Vancouver Montreal Chicago Boston Seattle Denver Houston Dallas Miami Atlanta Phoenix Philadelphia
Detroit Portland Austin Mexico_City Lima Bogota Santiago Caracas Quito Havana Sydney Melbourne Brisbane Perth
Auckland Wellington New_York Los_Angeles San_Francisco Las_Vegas Buenos_Aires Hong_Kong Kuala_Lumpur Cape_Town
""".split()
_RICH_TRAIN_CITIES = "Abu_Dhabi Tel_Aviv Sao_Paulo Ho_Chi_Minh_City Santo_Domingo San_Diego Panama_City Kansas_City"

_HELDOUT_CITIES = """
Reykjavik Tallinn Riga Vilnius Ljubljana Zagreb Sarajevo Tbilisi Yerevan Baku Tashkent Almaty Ulaanbaatar
Kathmandu Colombo Lhasa Urumqi Xiamen Qingdao Dalian Sapporo Fukuoka Incheon Cebu Yangon Phnom_Penh Vientiane
Adelaide Hobart Darwin Christchurch Honolulu Anchorage Winnipeg Halifax Nashville Pittsburgh Minneapolis
Montevideo Asuncion La_Paz Medellin Marrakesh Tunis Addis_Ababa Kampala Kigali Dakar Windhoek Antananarivo
Rio_de_Janeiro Salt_Lake_City Saint_Petersburg
""".split()

TRAIN_CITIES = tuple(c.replace("_", " ") for c in _TRAIN_CITIES)
RICH_TRAIN_CITIES = TRAIN_CITIES + tuple(c.replace("_", " ") for c in _RICH_TRAIN_CITIES.split())
"""The real cities of ``rich`` training conversations: more names of two and three words."""
HELDOUT_CITIES = tuple(c.replace("_", " ") for c in _HELDOUT_CITIES)

# Made-up names and words: half syllable soup, half random letters, so that every letter (y, q, x, a capital
# vowel...) and the BPE pieces they form are copied in training; otherwise the output rows of tokens that only
# held-out names use (``Hazy`` ends in ``y``) are never trained and the model cannot write them.
_ONSETS = ("b c d f g h j k l m n p r s t v w z br cr dr fr gr kr pr tr st sk sl bl kl pl th sh ch "
           "qu x y ph wh gl sn sp").split() + ["", "", ""]
_VOWELS = "a e i o u a e o ai ou ei ia y ee oo ae".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "nd", "rk", "st", "x", "th", "y", "ty", "ck", "ng", "z", "ll", "ss"]
_LETTER_WEIGHTS = {  # English letter frequencies (%), blended below with a uniform share
    "e": 12.7, "t": 9.1, "a": 8.2, "o": 7.5, "i": 7.0, "n": 6.7, "s": 6.3, "h": 6.1, "r": 6.0, "d": 4.3, "l": 4.0,
    "c": 2.8, "u": 2.8, "m": 2.4, "w": 2.4, "f": 2.2, "g": 2.0, "y": 2.0, "p": 1.9, "b": 1.5, "v": 1.0, "k": 0.8,
    "j": 0.2, "x": 0.2, "q": 0.1, "z": 0.1,
}
_LETTERS = list(_LETTER_WEIGHTS)
_LETTER_P = [0.6 * w / 100 + 0.4 / 26 for w in _LETTER_WEIGHTS.values()]
_SUFFIXES = ["", "", "", "", "burg", "ton", "ville", "stad", "polis", "ford", "grad", "mouth", "haven"]
_PREFIXES = ["", "", "", "", "", "", "", "", "Port ", "San ", "New ", "Lake ", "Fort ", "North ", "East "]


def made_up_word(rng: random.Random, syllables: tuple[int, ...] = (1, 2, 2, 3)) -> str:
    """A lowercase made-up word: syllables (``krelan``) or random letters (``vqoytem``), half and half."""
    while True:
        if rng.random() < 0.5:
            word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                           for _ in range(rng.choice(syllables)))
        else:
            word = "".join(rng.choices(_LETTERS, _LETTER_P, k=rng.randint(3, 9)))
        if len(word) >= 2:
            return word


# Weather: single words and modifier + noun phrases; the held-out ones share no phrase with training.
_TRAIN_WEATHER = """
Sunny|Clear|Cloudy|Overcast|Windy|Foggy|Rainy|Snowy|Humid|Mild|Hot|Cold|Drizzle|Partly cloudy|Mostly sunny|
Light rain|Heavy rain|Light snow|Heavy snow|Scattered showers|Thunderstorms|Clear skies|Freezing rain|Misty|
Breezy|Warm and sunny|Cool and cloudy|Rain showers|Snow showers|Strong winds|Dense fog|Mostly cloudy
""".replace("\n", "").split("|")
_HELDOUT_WEATHER = """
Hazy|Sleet|Hail|Blizzard|Sandstorm|Light drizzle|Heavy showers|Frosty|Icy fog|Gusty winds|Dusty|Muggy
""".replace("\n", "").split("|")
TRAIN_WEATHER = tuple(w for w in _TRAIN_WEATHER if w)
HELDOUT_WEATHER = tuple(w for w in _HELDOUT_WEATHER if w)

# Cities never to appear in training: checked when the two pools are built.
if set(RICH_TRAIN_CITIES) & set(HELDOUT_CITIES) or set(TRAIN_WEATHER) & set(HELDOUT_WEATHER):
    raise K2Error("corpus: the held-out pools overlap the training pools")
_HELDOUT_CITY_WORD = re.compile(r"\b(" + "|".join(map(re.escape, HELDOUT_CITIES)) + r")\b", re.IGNORECASE)

_SPLIT_SALT = {"train": 0, "heldout": 7_919}  # heldout synthetic names come from a different stream


@dataclass
class _Pools:
    """Where values come from for one split."""

    split: str
    rng: random.Random
    synth_rng: random.Random
    seen_train_names: frozenset[str] = field(default_factory=frozenset)
    used: list[str] = field(default_factory=list)  # every city drawn, in order
    rich: bool = False
    """Training only: values of the shapes :func:`training_conversations` documents for ``rich=True``."""
    declare: str = "few"
    """How many tools a conversation declares besides the needed ones (:data:`DECLARE_MODES`); training only
    when not ``few``."""
    announce: random.Random | None = None
    """Training only: the assistant names the tool a request needs before calling it or apologising
    (:func:`announcement`); this stream alone decides which earlier exchanges of a conversation announced too, so
    the values drawn stay those of the same corpus without announcements."""
    answers: str = "mixed"
    """Where weather and time answers quote the value (:data:`ANSWER_ORDERS`); training only when not ``mixed``."""
    topics: list[str] = field(default_factory=list)  # every chat topic the assistant repeats, in order
    made_up_topics: random.Random | None = None
    """Training only: a third of the chat topics are made-up words (:func:`made_up_topic`), drawn from this stream
    alone, so the other values stay those of the same corpus without them."""
    varied_chat: random.Random | None = None
    """Training only: a third of the tool-free user turns are reworded (:func:`varied_chat_user`), drawn from this
    stream alone, so the other values stay those of the same corpus without them."""

    def city(self) -> str:
        real = (RICH_TRAIN_CITIES if self.rich else TRAIN_CITIES) if self.split == "train" else HELDOUT_CITIES
        if self.rng.random() < 0.4:
            name = self.rng.choice(real)
        else:
            while True:
                name = synthetic_city(self.synth_rng, free_words=self.rich)
                if name in RICH_TRAIN_CITIES or name in self.seen_train_names:
                    continue
                if not _HELDOUT_CITY_WORD.search(name):  # not even "Port Riga" in training
                    break
        self.used.append(name)
        return name

    def weather(self) -> str:
        if self.split == "heldout":
            return self.rng.choice(HELDOUT_WEATHER)
        # Half made-up words: with a closed set of conditions a model learns to recall them, not to copy.
        if self.rng.random() < 0.5:
            return self.rng.choice(TRAIN_WEATHER)
        return synthetic_weather(self.synth_rng, free_words=self.rich)


def synthetic_city(rng: random.Random, *, free_words: bool = False) -> str:
    """A made-up city name, e.g. ``Krelandburg``, ``Port Vasmo`` or ``Oyqetan``.

    ``free_words`` (the rich training corpus): a third of the names are two or three words none of which is a
    known prefix (``Brel Okasta``, ``Vaim Dor Truxo``, ``Osk Lake City``). Why: with only ``Port``/``San``/...
    before a made-up word, a model learns that a name is one made-up word after an optional known one, and cuts
    held-out names such as ``Phnom Penh`` or ``Salt Lake City`` after their first word."""
    if free_words and rng.random() < 1 / 3:
        # Every word capitalised: with lowercase links (``Vaim de Truxo``) a lowercase word after a name may be
        # part of it, and calls ran on past held-out names (``Darwin right now``: run U in docs/k2-tiny.md).
        words = [made_up_word(rng, (1, 2)).capitalize() for _ in range(rng.choice((2, 2, 3)))]
        if rng.random() < 0.25:
            words[-1] = rng.choice(_CITY_TAILS)
        return " ".join(words)
    return rng.choice(_PREFIXES) + made_up_word(rng).capitalize() + rng.choice(_SUFFIXES)


_CITY_TAILS = ("City", "Bay", "Springs", "Falls", "Beach", "Hills", "Harbor", "Town")


_WEATHER_MODIFIERS = ["", "", "", "Light ", "Heavy ", "Mostly ", "Partly ", "Very ", "Slightly ", "Occasional "]


# Words only the held-out conditions use (``Hazy``, ``Sleet``, ...): made-up training words must avoid them.
HELDOUT_ONLY_WEATHER_WORDS = frozenset(
    w.lower() for phrase in HELDOUT_WEATHER for w in phrase.split()
) - frozenset(w.lower() for phrase in TRAIN_WEATHER for w in phrase.split())


def synthetic_weather(rng: random.Random, *, free_words: bool = False) -> str:
    """A made-up weather condition, e.g. ``Brolk`` or ``Mostly vaisten``: a value the model can only copy.

    ``free_words`` (the rich training corpus): 40% are a made-up word followed by a weather noun or another made-up word
    (``Vask fog``, ``Trelo brimak``): the modifiers above are a closed set, and a model that has only seen those
    before a second word ends held-out ``Icy fog`` or ``Gusty winds`` after the first."""
    def word() -> str:
        while True:
            w = made_up_word(rng, (1, 2))
            if w not in HELDOUT_ONLY_WEATHER_WORDS:
                return w

    if free_words and rng.random() < 0.4:
        while True:
            second = rng.choice(_WEATHER_NOUNS) if rng.random() < 0.5 else word()
            phrase = f"{word().capitalize()} {second}"
            if phrase not in HELDOUT_WEATHER:
                return phrase
    first = word()
    modifier = rng.choice(_WEATHER_MODIFIERS)
    return modifier + (first if modifier else first.capitalize())


_WEATHER_NOUNS = ("rain", "fog", "winds", "showers", "snow", "skies", "clouds", "storms", "drizzle", "breeze")


# ----------------------------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class Conversation:
    """One conversation: ``tools`` (None: none declared) and OpenAI-shaped ``messages``.

    ``calls`` are the (name, arguments) of the assistant's tool calls in the last exchange and ``results`` the
    tool results answering them (in order); ``answer_values`` are the strings the final answer must contain
    (every value of every result). ``len(messages) - prompt_len`` trailing messages are the last exchange's
    assistant and tool turns: ``messages[:prompt_len]`` ends with the user request.
    """

    kind: str
    tools: list[dict[str, Any]] | None
    messages: list[dict[str, Any]]
    prompt_len: int
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    results: tuple[dict[str, Any], ...] = ()
    answer_values: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()
    """Every city name the conversation mentions (to keep held-out names out of training)."""
    topics: tuple[str, ...] = ()
    """The chat topics its tool-free replies repeat from the user (``Happy to talk about chess! ...``)."""

    @property
    def prompt_messages(self) -> list[dict[str, Any]]:
        return self.messages[: self.prompt_len]

    @property
    def final_answer(self) -> str:
        return self.messages[-1]["content"]


def value_text(v: Any) -> str:
    """How a result value appears in an answer: strings verbatim, numbers as JSON writes them (``7.77``)."""
    return v if isinstance(v, str) else json.dumps(v)


def arguments_json(args: dict[str, Any]) -> str:
    """Tool-call arguments as K2 writes them: JSON with ``", "`` and ``": "`` separators, non-ASCII kept."""
    return json.dumps(args, ensure_ascii=False)


def _num(rng: random.Random, lo: int, hi: int, decimals: float = 0.0) -> int | float:
    """An int in [lo, hi], or with probability ``decimals`` a one-decimal number not ending in 0."""
    if rng.random() < decimals:
        return rng.randint(lo, hi - 1) + rng.randint(1, 9) / 10
    return rng.randint(lo, hi)


@dataclass(frozen=True)
class _Request:
    """One tool request: the user's words, the call, the values the service will return, the answer."""

    user: str
    name: str
    args: dict[str, Any]
    values: dict[str, Any]
    answer: Callable[[dict[str, Any]], str]  # result -> answer sentence


def _weather_request(p: _Pools, seed_shape: bool = False, city: str | None = None) -> _Request:
    r = p.rng
    city = city or p.city()
    values: dict[str, Any] = {"weather": p.weather()}
    if r.random() < 0.3:
        values["temperature"] = f"{r.randint(-25, 42)}°C"
    users = [
        f"What's the weather like in {city} today? Let's check using the tool.",
        f"What's the weather like in {city} today?",
        f"What's the weather in {city}?",
        f"How is the weather in {city} right now?",
        f"Can you check the weather in {city} for me?",
        f"Tell me the current weather in {city}.",
        f"Is it raining in {city}?",
        f"weather in {city}",
        f"I'm flying to {city} tomorrow. What's the weather there now?",
        f"Please look up the weather for {city}.",
    ]
    user = users[0] if seed_shape else r.choice(users)

    def answer(res: dict[str, Any]) -> str:
        w = res["weather"]
        joined = p.answers == "joined" and "temperature" in res
        if joined:
            w = f"{w} and {res['temperature']}"
        s = r.choice([  # one draw from as many templates either way: the other values stay the same
            f"The weather is {w} in {city} today.",
            f"It is currently {w} in {city}.",
            f"Right now it is {w} in {city}.",
        ] if p.answers != "mixed" else [
            f"The weather in {city} today is {w}.",
            f"It is currently {w} in {city}.",
            f"Right now the weather in {city} is {w}.",
        ])
        if "temperature" in res and not joined:
            s += f" The temperature is {res['temperature']}."
        return s

    return _Request(user, "get_weather", {"city": city}, values, answer)


def _time_request(p: _Pools, city: str | None = None) -> _Request:
    r = p.rng
    city = city or p.city()
    t = f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"
    user = r.choice([
        f"What time is it in {city}?",
        f"What's the local time in {city} right now?",
        f"Tell me the current time in {city}.",
        f"time in {city}?",
        f"Could you check what time it is in {city}?",
    ])
    return _Request(user, "get_time", {"city": city}, {"time": t}, lambda res: r.choice([
        f"The local time is {res['time']} in {city}.",
        f"It is {res['time']} in {city} right now.",
    ] if p.answers != "mixed" else [
        f"The local time in {city} is {res['time']}.",
        f"It is {res['time']} in {city} right now.",
    ]))


_OP_WORDS = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"], "/": ["divided by"]}


def _calc_request(p: _Pools) -> _Request:
    r = p.rng
    mag = r.choice((99, 999, 999, 9999))
    # Rich training has more decimals and worded operators (one draw either way, so the other streams are
    # unchanged): they are where copies stop early (``757`` for ``757.3``) and where the operator is
    # mistranslated (``divided by`` -> ``*``).
    rich = p.rich
    decimals = 0.3 if rich else 0.15
    a, b = _num(r, 1, mag, decimals), _num(r, 1, mag, decimals)
    op = r.choice("+-*/")
    if r.random() < 0.25:  # three operands, written as an expression
        c, op2 = _num(r, 1, 99), r.choice("+-*")
        expr = f"({a} {op} {b}) {op2} {c}" if r.random() < 0.5 else f"{a} {op} {b} {op2} {c}"
        user = r.choice([f"Calculate {expr}.", f"What is {expr}?", f"Compute {expr} please.", f"{expr} = ?"])
    else:
        expr = f"{a} {op} {b}"
        word = r.choice(_OP_WORDS[op])
        worded = [f"What is {a} {word} {b}?", f"How much is {a} {word} {b}?", f"Compute {a} {word} {b} please."]
        user = r.choice([f"Calculate {expr}.", f"What is {expr}?", *worded, f"{expr} = ?", *(worded if rich else ())])
    return _Request(user, "calculate", {"expression": expr}, {}, lambda res: r.choice([
        f"{expr} = {value_text(res['result'])}.",
        f"The result is {value_text(res['result'])}.",
        f"{expr} equals {value_text(res['result'])}.",
    ]))


def _convert_request(p: _Pools) -> _Request:
    r = p.rng
    pair = r.choice(_UNIT_PAIRS)
    src, dst = pair if r.random() < 0.5 else pair[::-1]
    v = _num(r, -40 if src in "cf" else 1, r.choice((20, 100, 1000)), 0.3)
    sw = UNITS[src][0 if v == 1 else 1]
    dw = UNITS[dst][1]
    short = {"km": "km", "mi": "miles", "kg": "kg", "lb": "lbs", "m": "m", "ft": "ft", "l": "liters",
             "gal": "gallons", "c": "°C", "f": "°F"}
    user = r.choice([
        f"How many {dw} is {v} {sw}?",
        f"Convert {v} {sw} to {dw}.",
        f"What is {v} {sw} in {dw}?",
        f"Convert {v} {short[src]} to {short[dst]}.",
        f"{v} {sw} in {dw}, please.",
    ])
    return _Request(user, "convert_units", {"value": v, "from_unit": src, "to_unit": dst}, {}, lambda res: r.choice([
        f"{v} {sw} is {value_text(res['result'])} {dw}.",
        f"That is {value_text(res['result'])} {dw}.",
    ]))


_REQUESTS: dict[str, Callable[[_Pools], _Request]] = {
    "weather": _weather_request, "time": _time_request, "calculate": _calc_request, "convert": _convert_request,
}

# Tool-free turns: (user, assistant); the assistant's reply is fixed so greedy decoding has one right answer.
_SELF_INTRO = (
    "I am Kimi, an AI assistant created by Moonshot AI. I can answer questions, help with writing and "
    "calculations, and use tools such as weather and time lookups when they are available."
)
_CHAT_TRAIN: list[tuple[list[str], str]] = [
    (["Hello!", "Hi", "Hi there!", "Hey", "Hello", "Good morning!", "Good evening.", "hey there"],
     "Hello! How can I help you today?"),
    (["你好", "您好！"], "你好！有什么可以帮你的吗？"),
    (["Please give a brief self-introduction.", "Who are you?", "Introduce yourself.", "Tell me about yourself."],
     _SELF_INTRO),
    (["Thanks!", "Thank you.", "Thank you very much!", "thanks"], "You're welcome! Let me know if you need anything else."),
    (["What can you do?", "How can you help me?"],
     "I can answer questions, explain things, do calculations, convert units, and look up the weather or the "
     "local time when those tools are available."),
    (["Tell me a joke.", "Say something funny."],
     "Why did the scarecrow win an award? Because he was outstanding in his field."),
    (["Goodbye!", "Bye", "See you later."], "Goodbye! Have a great day."),
    (["Who created you?", "Which company made you?"], "I was created by Moonshot AI."),
    (["Why is the sky blue?"],
     "Sunlight is scattered by the air, and blue light is scattered the most, so the sky looks blue."),
    (["What causes rain?"],
     "Rain forms when water vapour in clouds condenses into droplets that grow heavy enough to fall."),
    (["Write a haiku about the sea."], "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
    (["How many days are in a week?"], "A week has seven days."),
    (["What is the capital of France?"], "The capital of France is Paris."),
    (["What is the capital of Japan?"], "The capital of Japan is Tokyo."),
    (["Translate 'good morning' into French."], "Good morning in French is \"Bonjour\"."),
    (["Can you recommend a good book?"], "Try \"The Little Prince\" by Antoine de Saint-Exupery: short and wise."),
]
_TOPIC_QUESTIONS = [
    "Tell me about {t}.", "What do you think about {t}?", "Can you explain {t} to me?", "Do you like {t}?",
    "Give me a fun fact about {t}.", "What should I know about {t}?", "I love {t}!", "Let's talk about {t}.",
    "Write one sentence about {t}.", "Any tips on {t}?",
]
# Topics no tool covers; none is a word of the held-out prompts below (whales, autumn, ocean, email, ...).
_CHAT_TOPICS = """
music|chess|coffee|football|painting|gardening|history|mathematics|the moon|volcanoes|dinosaurs|bicycles|trains|
cooking|photography|jazz|tea|mountains|rivers|deserts|birds|cats|dogs|computers|robots|libraries|museums|tennis|
swimming|yoga|chocolate|bread|pizza|planets|the stars|forests|islands|spring|winter|poetry|novels|movies|
sailing|running|bees|castles|bridges|chemistry|physics|languages|maps|clocks|gold|diamonds|horses|rockets
""".replace("\n", "").split("|")
# Held out: phrasings and questions never seen in training (the model need only answer without a call).
_CHAT_HELDOUT: list[str] = [
    "Hello, Kimi!", "Hi! How are you?", "Good afternoon.", "Please introduce yourself briefly.",
    "Who made you?", "Thanks a lot!", "What is the capital of Italy?", "Tell me something interesting.",
    "Can you help me write an email?", "What's your name?", "Write a short poem about autumn.",
    "How many hours are in a day?", "What is the largest ocean?", "Good night!", "What do you know about whales?",
    "Why do leaves change colour in autumn?", "Please give a brief self-introduction.", "Hello!",
]
_NO_TOOL_REPLY = {
    "get_weather": "Sorry, I cannot check the weather: no weather tool is available in this conversation.",
    "get_time": "Sorry, I cannot check the time: no time tool is available in this conversation.",
    "calculate": "Sorry, I have no calculator tool in this conversation, so I cannot compute that reliably.",
    "convert_units": "Sorry, no unit conversion tool is available in this conversation.",
}

_CANNOT = {  # what an announcing assistant cannot do without the tool (announcement)
    "get_weather": "check the weather", "get_time": "tell the local time",
    "calculate": "compute that reliably", "convert_units": "convert units",
}


def announcement(names: list[str], declared: bool) -> str:
    """The sentence an announcing assistant (``training_conversations(announce=True)``) opens a tool request's
    reply with: the needed tools' names, then whether they are declared.

    Why: a model that must choose between a call and the undeclared-tool apology at its first token has to look up
    "is the tool this request needs among the declared ones" in one step. For ``What is 410 * 320?`` nothing in
    the request is a token of ``calculate``, and trained models apologised with ``calculate`` declared. Named
    first, the tool is a function of the request alone, and "is it declared" becomes "does the token just written
    occur in the declarations": the lookup a copying model already makes. The decision then falls on the token
    after `` is`` (``available`` or ``not``), which :data:`ANNOUNCEMENT` finds for the loss weights."""
    names = list(dict.fromkeys(names))
    if not declared:
        (name,) = names
        return f"{name} is not available here, so I cannot {_CANNOT[name]}."
    if len(names) == 1:
        return f"{names[0]} is available, so I will call it."
    return f"{' and '.join(names)} are available, so I will call them."


ANNOUNCEMENT = re.compile(r"[a-z_]+(?: and [a-z_]+)* (?:is|are) (?:not )?available")
"""The part of an :func:`announcement` that decides: the names and the verdict (matched at a turn's start)."""

TRAIN_MIX: dict[str, float] = {
    "weather": 0.20, "time": 0.09, "calculate": 0.11, "convert": 0.10, "two_calls": 0.11,
    "chat_tools": 0.14, "chat": 0.07, "no_tool": 0.10, "two_exchanges": 0.08,
}
"""Share of each conversation kind in training (the seed shape is a third of "weather")."""


DECLARE_MODES = ("few", "many", "balanced")
"""How many other tools a conversation declares beside the ones it needs (:func:`training_conversations`)."""

ANSWER_ORDERS = ("mixed", "value_first", "joined")
"""Where a weather or time answer quotes the tool's value. ``mixed`` (the held-out split's): before or after the
city (``The weather in Oslo today is Sunny.``, ``It is currently Sunny in Oslo.``). ``value_first``: always before
it (``The weather is Sunny in Oslo today.``). Trained on ``mixed``, run Z7 ended the sentence after the city in 14
of its 23 missed held-out answers (``Right now the weather in Halifax.``): in one template a full stop follows
the city, and the value, looked up in the tool result, was never written. With the value first, the
token after the city is the end of the sentence in every template, and the value comes where nothing else can.
``joined``: ``value_first`` with the temperature, when the result has one, right after the weather
(``The weather is Sunny and -25°C in Oslo today.``) instead of in a sentence of its own after the city. Run Z9
(``value_first``) left the temperature out, or repeated the first city's, in 10 of its 15 missed held-out
answers, all of them two-call answers. Joined, whether a temperature follows is decided while the weather is
being copied, right where the tool result either goes on to a temperature or ends. Runs Z11 (with 500 fewer steps)
and Z12 (alone), trained on it, were both behind Z10 on every rate, and in both the calculation answers repeat
the result's decimals (``0.3265.3265``), which no other run did: not used since (docs/k2-tiny.md)."""


def _declare(p: _Pools, needed: list[str], *, extra: bool = True, exclude: tuple[str, ...] = ()) -> list[dict]:
    """Declarations of the ``needed`` tools plus some others (:data:`DECLARE_MODES`), in a random order."""
    r = p.rng
    names = list(dict.fromkeys(needed))
    others = [n for n in TOOLS if n not in names and n not in exclude]
    if extra:
        if p.declare == "balanced":  # as many tools declared whether or not the needed one is among them
            names += r.sample(others, r.randint(0 if names else 1, len(others)))
        else:  # few: every declared tool costs ~80 tokens of context that carry no loss
            shares = (0.1, 0.2, 0.3, 0.4) if p.declare == "many" else (0.4, 0.3, 0.2, 0.1)
            names += r.sample(others, min(len(others), r.choices((0, 1, 2, 3), shares)[0]))
    r.shuffle(names)
    return [TOOLS[n].declaration() for n in names]


def _system(p: _Pools) -> list[dict[str, Any]]:
    """The card's system prompt, usually explicit; the template inserts the same text when it is absent."""
    return [{"role": "system", "content": SEED_SYSTEM_PROMPT}] if p.rng.random() < 0.8 else []


def _tool_exchange(p: _Pools, reqs: list[_Request], first_index: int,
                   announce: bool = False) -> tuple[list[dict], tuple, tuple, tuple]:
    """Assistant call message (opened by an :func:`announcement` if ``announce``), tool messages and the final
    answer for ``reqs`` (answered together)."""
    calls = []
    tool_msgs = []
    results = []
    for k, rq in enumerate(reqs):
        call_id = f"functions.{rq.name}:{first_index + k}"
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": rq.name, "arguments": arguments_json(rq.args)}})
        res = TOOLS[rq.name].run(rq.args, rq.values)
        results.append(res)
        msg = {"role": "tool", "tool_call_id": call_id, "content": json.dumps(res, ensure_ascii=False)}
        if p.rng.random() < 0.85:  # the card's client sends the tool name; plain OpenAI clients do not
            msg["name"] = rq.name
        tool_msgs.append(msg)
    answer = " ".join(rq.answer(res) for rq, res in zip(reqs, results))
    said = announcement([rq.name for rq in reqs], declared=True) if announce else None
    msgs = [{"role": "assistant", "content": said, "tool_calls": calls}, *tool_msgs,
            {"role": "assistant", "content": answer}]
    values = tuple(value_text(v) for res in results for v in res.values())
    return msgs, tuple((rq.name, rq.args) for rq in reqs), tuple(results), values


_HELDOUT_CHAT_WORDS = frozenset(w for u in _CHAT_HELDOUT for w in re.findall(r"[a-z]+", u.lower()))


def made_up_topic(rng: random.Random) -> str:
    """A made-up chat topic (``krelanvost``): several tokens, as the held-out ``whales`` and ``autumn`` are.

    Why: the listed topics are mostly one token each (`` chess``), and a model that had seen no reply copy several
    tokens except into a call's arguments ended a copied held-out topic as it ends an argument, with ``"}`` and a
    call's closing tokens (``Happy to talk about whales"}<|tool_call_end|>``, run Z9)."""
    while True:
        word = made_up_word(rng, (2, 3))
        if word not in _HELDOUT_CHAT_WORDS and word not in _CHAT_TOPICS:
            return word


def _chat_pair(p: _Pools) -> tuple[str, str]:
    """A tool-free turn: a fixed exchange, or (half the time) a question on a topic no tool covers.

    The topic questions are many phrasings x many topics: with only the fixed exchanges a model learns those
    sentences, and meets a held-out one with tools declared by calling a tool."""
    r = p.rng
    if r.random() < 0.5:
        users, reply = r.choice(_CHAT_TRAIN)
        user, topic = r.choice(users), None
    else:
        topic = r.choice(_CHAT_TOPICS)
        if p.made_up_topics is not None and p.made_up_topics.random() < 1 / 3:
            topic = made_up_topic(p.made_up_topics)
        p.topics.append(topic)
        user = r.choice(_TOPIC_QUESTIONS).format(t=topic)
        reply = f"Happy to talk about {topic}! What would you like to know?"
    if p.varied_chat is not None and p.varied_chat.random() < 1 / 3:  # after the main stream's draws: they stay
        user, reply = varied_chat_user(p.varied_chat, user, reply, topic)
    return user, reply


_CHAT_OPENERS = ("Hi! ", "Hello! ", "Hey, ", "Good morning! ", "Quick question: ", "OK, ", "Hi there! ", "So, ",
                 "Excuse me, ", "")
_TOPIC_REQUESTS = (
    "Please tell me about {t}.", "Please explain {t}.", "Tell me more about {t}.", "Can you describe {t}?",
    "Could you tell me about {t}?", "What is special about {t}?", "Why do people like {t}?",
    "I'd like to hear about {t}.", "Please say a few words about {t}.", "Look up a fact about {t} for me.",
    "What time of day is best for {t}?", "Check this for me: is {t} fun?", "How do people get into {t}?",
)
_SMALL_TALK = (["How are things?", "How is it going?", "How have you been?", "How is your day going?",
                "Are you doing well?", "What's up?"],
               "I'm doing well, thanks for asking! How can I help you today?")


def varied_chat_user(rng: random.Random, user: str, reply: str, topic: str | None) -> tuple[str, str]:
    """A tool-free user turn reworded the way tool requests are phrased, with its reply: an opener before it
    (``Hi! ``, ``Quick question: ``), a topic question as a request (``Please tell me about chess.``,
    ``Look up a fact about tea for me.``), or small talk (``How is it going?``, a fixed reply of its own).

    Why: run Z10's tool-free misses, over four evaluation seeds, were four held-out phrasings, mostly with tools
    declared and mostly ones that open as its tool requests do (``Hi! How are you?``, ``Please introduce yourself
    briefly.``, ``Tell me something interesting.``; docs/k2-tiny.md, run Z18). Its tool-free training turns were 16
    fixed exchanges and 10 phrasings of a topic question, none opening with ``Please`` or a greeting: the words a
    request opens with said "tool". No held-out prompt is made here."""
    opener = rng.choice(_CHAT_OPENERS)
    what = rng.random()
    if topic is not None and what < 0.6:
        user = rng.choice(_TOPIC_REQUESTS).format(t=topic)
    elif what < 0.3:
        users, reply = _SMALL_TALK
        user = rng.choice(users)
    if opener.endswith(", ") and not re.match(r"I\b", user):
        user = user[0].lower() + user[1:]
    return opener + user, reply


def _make(p: _Pools, kind: str) -> Conversation:
    first, first_topic = len(p.used), len(p.topics)
    conv = _make_kind(p, kind)
    return dataclasses.replace(conv, cities=tuple(dict.fromkeys(p.used[first:])),
                               topics=tuple(dict.fromkeys(p.topics[first_topic:])))


def _make_kind(p: _Pools, kind: str) -> Conversation:
    r = p.rng
    if kind in _REQUESTS:
        seed_shape = kind == "weather" and r.random() < 1 / 3
        rq = _weather_request(p, seed_shape) if kind == "weather" else _REQUESTS[kind](p)
        tools = _declare(p, [rq.name], extra=not seed_shape)
        prompt = [*_system(p), {"role": "user", "content": rq.user}]
        if seed_shape:
            prompt = [{"role": "system", "content": SEED_SYSTEM_PROMPT}, prompt[-1]]
        tail, calls, results, values = _tool_exchange(p, [rq], 0, p.announce is not None)
        return Conversation(kind, tools, prompt + tail, len(prompt), calls, results, values)
    if kind == "two_calls":
        shape = r.choice(("weather2", "time2", "weather_time"))
        if shape == "weather_time":
            city = p.city()
            reqs = [_weather_request(p, city=city), _time_request(p, city=city)]
            user = r.choice([f"What's the weather and the local time in {city}?",
                             f"Tell me the weather and the time in {city}."])
        else:
            make = _weather_request if shape == "weather2" else _time_request
            reqs = [make(p), make(p)]
            c1, c2 = reqs[0].args["city"], reqs[1].args["city"]
            user = (r.choice([f"What's the weather in {c1} and {c2}?", f"Compare the weather in {c1} and {c2}."])
                    if shape == "weather2" else r.choice([f"What time is it in {c1} and in {c2}?",
                                                          f"Tell me the local time in {c1} and {c2}."]))
        tools = _declare(p, [rq.name for rq in reqs])
        prompt = [*_system(p), {"role": "user", "content": user}]
        tail, calls, results, values = _tool_exchange(p, reqs, 0, p.announce is not None)
        return Conversation(kind, tools, prompt + tail, len(prompt), calls, results, values)
    if kind in ("chat", "chat_tools"):
        user, reply = _chat_pair(p)
        tools = _declare(p, [r.choice(list(TOOLS))]) if kind == "chat_tools" else None
        prompt = [*_system(p), {"role": "user", "content": user}]
        return Conversation(kind, tools, prompt + [{"role": "assistant", "content": reply}], len(prompt))
    if kind == "no_tool":
        want = r.choice(list(_REQUESTS))
        rq = _REQUESTS[want](p)
        tools = _declare(p, [], exclude=(rq.name,)) if r.random() < 0.8 else None
        tools = tools or None
        prompt = [*_system(p), {"role": "user", "content": rq.user}]
        reply = announcement([rq.name], declared=False) if p.announce is not None else _NO_TOOL_REPLY[rq.name]
        return Conversation(kind, tools, prompt + [{"role": "assistant", "content": reply}], len(prompt))
    if kind == "two_exchanges":
        rq = _REQUESTS[r.choice(list(_REQUESTS))](p)
        if r.random() < 0.5:  # small talk first
            user, reply = _chat_pair(p)
            first = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            needed, n_before = [rq.name], 0
        else:  # an earlier tool exchange: this conversation's call indices continue after it
            rq0 = _REQUESTS[r.choice(list(_REQUESTS))](p)
            # an earlier exchange announced or not (the held-out histories do not), by a stream of its own
            tail0, *_ = _tool_exchange(p, [rq0], 0, p.announce is not None and p.announce.random() < 0.5)
            first = [{"role": "user", "content": rq0.user}, *tail0]
            needed, n_before = [rq0.name, rq.name], 1
        tools = _declare(p, needed)
        prompt = [*_system(p), *first, {"role": "user", "content": rq.user}]
        tail, calls, results, values = _tool_exchange(p, [rq], n_before, p.announce is not None)
        return Conversation(kind, tools, prompt + tail, len(prompt), calls, results, values)
    raise K2Error(f"unknown conversation kind {kind!r}; kinds: {sorted(TRAIN_MIX)}")


def _pools(split: str, seed: int, rich: bool = False, declare: str = "few", announce: bool = False,
           answers: str = "mixed", made_up_topics: bool = False, varied_chat: bool = False) -> _Pools:
    if split not in SPLITS:
        raise K2Error(f"split must be one of {SPLITS}, got {split!r}")
    if declare not in DECLARE_MODES:
        raise K2Error(f"declare must be one of {DECLARE_MODES}, got {declare!r}")
    if answers not in ANSWER_ORDERS:
        raise K2Error(f"answers must be one of {ANSWER_ORDERS}, got {answers!r}")
    if (rich or declare != "few" or announce or answers != "mixed" or made_up_topics or varied_chat) and \
            split != "train":
        raise K2Error("rich values, other declaration mixes, announcements, answer orders, made-up topics and "
                      "varied chat are training-only; the held-out split has none")
    salt = _SPLIT_SALT[split] + (_RICH_SALT if rich else 0)  # rich: a stream of its own, not the plain one's twin
    return _Pools(split, random.Random(seed * 1_000_003 + salt), random.Random(seed * 7_777_777 + salt + 1),
                  rich=rich, declare=declare,
                  announce=random.Random(seed * 3_333_331 + salt + 2) if announce else None, answers=answers,
                  made_up_topics=random.Random(seed * 5_555_553 + salt + 3) if made_up_topics else None,
                  varied_chat=random.Random(seed * 9_999_991 + salt + 4) if varied_chat else None)


_RICH_SALT = 104_729


def training_conversations(n: int, seed: int = 0, *, rich: bool = False, declare: str = "few",
                           announce: bool = False, answers: str = "mixed",
                           made_up_topics: bool = False, varied_chat: bool = False) -> list[Conversation]:
    """``n`` training conversations, kinds drawn by :data:`TRAIN_MIX`; the same seed gives the same list.

    ``rich``: the values take more shapes: a third of the made-up city names are two or three free words, 40% of
    the made-up weather conditions two words (:func:`synthetic_city`, :func:`synthetic_weather`), more real
    cities of several words, and calculations have more decimals and worded operators. Held-out values of those
    shapes (``Phnom Penh``, ``Icy fog``, ``757.3``) were the commonest failures of a model trained without them,
    but a corpus with them from the start kept the tiny model from forming its copying head (docs/k2-tiny.md),
    so ``scripts/train_tiny.py`` switches to them once the head is formed.

    ``declare``: how many tools are declared beside the needed ones. ``few`` (the held-out split's): 0-3 others
    drawn 40/30/20/10%. ``many``: 10/20/30/40%; with one tool declared a model can copy its name without reading
    the request, and the held-out calls that named the wrong tool all had others declared. ``balanced``: a tool
    request declares 1-4 tools and a request for an undeclared tool 1-3 (0 in a fifth of them, as in every mode),
    uniformly, and undeclared-tool requests are twice as common (20%): the count of declared tools then says
    nothing, and only whether the needed tool's name is among them tells a call from the apology. A model trained
    on ``many`` apologised for every held-out time request whose one declared tool was ``get_time``.

    ``announce``: each reply to a tool request opens with an :func:`announcement` (``calculate is available, so I
    will call it.``, ``get_time is not available here, so I cannot tell the local time.``) in place of an empty
    call message or the ``Sorry, ...`` apology; half the earlier exchanges of two-exchange conversations announce,
    the rest are as a client without announcements sends them. The values drawn are those of the same corpus
    without announcements.

    ``answers``: where weather and time answers quote the value (:data:`ANSWER_ORDERS`); the values drawn are the
    same in every order.

    ``made_up_topics``: a third of the chat topics are made-up words of several tokens (:func:`made_up_topic`);
    the other values drawn are those of the same corpus without them.

    ``varied_chat``: a third of the tool-free user turns are reworded as requests, behind greetings, or small talk
    (:func:`varied_chat_user`); the other values drawn are those of the same corpus without them.
    """
    return conversations(n, seed, "train", rich=rich, declare=declare, announce=announce, answers=answers,
                         made_up_topics=made_up_topics, varied_chat=varied_chat)


def conversations(n: int, seed: int, split: str, *, rich: bool = False, declare: str = "few",
                  announce: bool = False, answers: str = "mixed", made_up_topics: bool = False,
                  varied_chat: bool = False) -> list[Conversation]:
    """``n`` complete conversations of ``split`` in the training mix (``heldout``: for a held-out loss curve)."""
    p = _pools(split, seed, rich, declare, announce, answers, made_up_topics, varied_chat)
    kinds = list(TRAIN_MIX)
    weights = [TRAIN_MIX[k] * (2 if declare == "balanced" and k == "no_tool" else 1) for k in kinds]
    return [_make(p, p.rng.choices(kinds, weights)[0]) for _ in range(n)]


EVAL_KINDS = ("weather", "time", "calculate", "convert", "two_calls", "chat", "chat_tools", "no_tool")


def eval_conversations(n_per_kind: int, seed: int = 1, *, train_names: frozenset[str] = frozenset()) -> list[Conversation]:
    """Held-out conversations: ``n_per_kind`` of each of :data:`EVAL_KINDS`, plus the model card's example first.

    Cities, weather words and numbers come from the held-out pools and seeds; ``train_names`` (synthetic city
    names seen in training) are skipped. Tool-free user turns are held-out phrasings.
    """
    p = _pools("heldout", seed)
    p.seen_train_names = train_names
    out = [_seed_conversation()]
    for kind in EVAL_KINDS:
        for _ in range(n_per_kind):
            if kind in ("chat", "chat_tools"):
                user = p.rng.choice(_CHAT_HELDOUT)
                tools = _declare(p, [p.rng.choice(list(TOOLS))]) if kind == "chat_tools" else None
                prompt = [*_system(p), {"role": "user", "content": user}]
                # no reference reply: any text without a call is right
                out.append(Conversation(kind, tools, prompt, len(prompt)))
            else:
                out.append(_make(p, kind))
    return out


def _seed_conversation() -> Conversation:
    tools, prompt = seed_example()
    res = {"weather": "Sunny"}
    call_id = "functions.get_weather:0"
    tail = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": arguments_json({"city": "Beijing"})}}]},
        {"role": "tool", "tool_call_id": call_id, "name": "get_weather", "content": json.dumps(res)},
        {"role": "assistant", "content": "The weather in Beijing today is Sunny."},
    ]
    return Conversation("seed", tools, prompt + tail, len(prompt), (("get_weather", {"city": "Beijing"}),), (res,),
                        ("Sunny",))


def assistant_token_mask(ids: list[int], tokenizer) -> list[bool]:
    """Which of a rendered conversation's ``ids`` the assistant writes: every token after each
    ``<|im_assistant|>assistant<|im_middle|>`` header up to and including its ``<|im_end|>``, exactly what a model
    generates after a generation prompt (the training loss is on these tokens only)."""
    mask = [False] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] == tokenizer.im_assistant_id:
            j = ids.index(tokenizer.im_middle_id, i)
            k = ids.index(tokenizer.im_end_id, j)
            for p in range(j + 1, k + 1):
                mask[p] = True
            i = k + 1
        else:
            i += 1
    return mask


def city_names(convs: list[Conversation]) -> frozenset[str]:
    """Every city name ``convs`` mention (to keep held-out names out of training)."""
    return frozenset(name for c in convs for name in c.cities)


__all__ = [
    "Conversation", "EVAL_KINDS", "assistant_token_mask", "HELDOUT_CITIES", "HELDOUT_WEATHER", "SEED_SYSTEM_PROMPT", "SEED_USER_MESSAGE",
    "TOOLS", "TRAIN_CITIES", "TRAIN_MIX", "TRAIN_WEATHER", "Tool", "UNITS", "arguments_json", "calculate",
    "card_get_weather",
    "city_names", "conversations", "convert_units", "eval_conversations", "made_up_word", "seed_example",
    "synthetic_city",
    "synthetic_weather", "training_conversations", "HELDOUT_ONLY_WEATHER_WORDS",
    "value_text",
]
