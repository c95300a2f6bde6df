"""The verifiable reward and the answer grader (spec §5.1, with the release's defects fixed: spec §0.1).

    reward = 0.8 · accuracy + 0.2 · format        accuracy = grade_answer(<answer> content, ground truth)

The grader is rule-based and deterministic; math-verify decides, under a per-call time limit, the
single values the rules cannot.
"""

import logging
import re
import signal
import threading
import time
import unicodedata
from fractions import Fraction
from functools import partial

from math_verify import LatexExtractionConfig
from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify

from data import parse_response

# grade_answer runs math-verify under its own time limit, so math-verify's are switched off; its
# warning that they are off would otherwise print once per process.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# The caller's rule: an answer this long scores 0.2 without being judged. grade_answer applies
# the same cap to both sides so that every rule below only ever sees short strings.
MAX_ANSWER_CHARS = 1024

# --- Unicode and LaTeX normalisation -----------------------------------------------------------

# NFKC would turn "x²" into "x2" and "3½" into "31⁄2", so these are rewritten before it runs.
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_VULGAR_FRACTION = re.compile("([+-]?\\d*)([\u00bc-\u00be\u2150-\u215e\u2189])")
_CIRCLED_NUMBER = re.compile("[\u2460-\u2473]")
# What NFKC leaves alone: the minus sign, the fraction slash, symbols that LaTeX answers spell
# as commands, and CJK sentence punctuation.
_SYMBOLS = str.maketrans({
    "\u2212": "-", "\u2044": "/", "π": r"\pi ", "∞": r"\infty ", "√": r"\sqrt ", "×": r"\times ",
    "·": r"\cdot ", "÷": r"\div ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "。": ".", "、": ",",
})
_MATH_DELIMITERS = (
    re.compile(r"\$\$(.+?)\$\$", re.S),
    re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$", re.S),
    re.compile(r"\\\((.+?)\\\)", re.S),
    re.compile(r"\\\[(.+?)\\\]", re.S),
)
_UNWRAPPED_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mathbf|boxed)\s*\{")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREE_SIGN = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree")
_THIN_SPACE_IN_NUMBER = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_LATEX_SPACE = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle|~")
# A proper digit grouping only: "4,024,533" but not "3,4" or "1,23".
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")


def _vulgar_to_slash(match: re.Match) -> str:
    """"½" → "1/2", and a mixed number "-3½" → "-7/2", exactly."""
    numerator, denominator = unicodedata.normalize("NFKC", match.group(2)).split("\u2044")
    sign, whole = match.group(1)[:1], match.group(1).lstrip("+-")
    value = int(whole or 0) + Fraction(int(numerator), int(denominator))
    return f"{'-' if sign == '-' else ''}{value.numerator}/{value.denominator}"


def _bracket_depths(text: str, opening: str, closing: str) -> list[int]:
    """The bracket depth before each character (unbalanced closers are ignored)."""
    depths, depth = [], 0
    for char in text:
        depths.append(depth)
        if char in opening:
            depth += 1
        elif char in closing:
            depth = max(depth - 1, 0)
    return depths


def _unwrap_commands(text: str) -> str:
    while match := _UNWRAPPED_COMMAND.search(text):
        end, depth = match.end(), 1
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        inner = text[match.end():end - 1] if depth == 0 else text[match.end():]
        # The leading space keeps "5\text{m}" a number and a unit rather than a word.
        text = text[:match.start()] + " " + inner + text[end:]
    return text


def _normalise_answer(text: str) -> str:
    """Unicode and LaTeX normalisation of a whole answer, before it is split into values."""
    text = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group().translate(_SUPERSCRIPT_DIGITS) + "}", text)
    text = _VULGAR_FRACTION.sub(_vulgar_to_slash, text)
    text = _CIRCLED_NUMBER.sub(lambda m: f" ({ord(m.group()) - 0x245F}) ", text)
    text = unicodedata.normalize("NFKC", text).translate(_SYMBOLS)
    for delimiters in _MATH_DELIMITERS:
        text = delimiters.sub(r"\1", text)
    text = text.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    text = _LEFT_RIGHT.sub("", _unwrap_commands(text))
    text = _DEGREE_SIGN.sub("°", text).replace(r"\%", "%").replace(r"\$", "$").replace("{,}", ",")
    text = _LATEX_SPACE.sub(" ", _THIN_SPACE_IN_NUMBER.sub("", text))
    # Inside brackets a comma separates coordinates: "(1,234)" is a point, not 1234.
    depths = _bracket_depths(text, "([", ")]")
    text = _THOUSANDS.sub(lambda m: m.group() if depths[m.start()] else m.group().replace(",", ""), text)
    return _strip_value(text)


def _strip_value(text: str) -> str:
    text = " ".join(text.split()).strip(",; ")
    return text[:-1].rstrip() if text.endswith(".") else text


# --- Splitting a multi-value answer ------------------------------------------------------------

# "(2)" right after a word or bracket is a call or a product, "f(2)", not an item marker.
_ITEM_MARKER = re.compile(r"(?<![\w)\]}])\((\d{1,2})\)")


def _split_top_level(text: str, separator: str) -> list[str]:
    depths = _bracket_depths(text, "([{", ")]}")
    cuts = [i for i, char in enumerate(text) if char == separator and depths[i] == 0]
    return [text[start + 1:end] for start, end in zip([-1, *cuts], [*cuts, len(text)])]


def _split_answer(text: str) -> list[str]:
    """Numbered items "(1) … (2) …", else top-level semicolons, else top-level commas."""
    markers = []
    for marker in _ITEM_MARKER.finditer(text):
        if int(marker.group(1)) == len(markers) + 1:
            markers.append(marker)
    if len(markers) >= 2 and markers[0].start() <= 2:
        ends = [marker.start() for marker in markers[1:]] + [len(text)]
        parts = [text[marker.end():end] for marker, end in zip(markers, ends)]
    else:
        parts = _split_top_level(text, ";")
        if len(parts) < 2:
            parts = _split_top_level(text, ",")
    parts = [_strip_value(part) for part in parts]
    return [part for part in parts if part] or [text]


# --- Numbers, points, units --------------------------------------------------------------------

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER = re.compile(_DECIMAL)
# The exponent is capped at three digits so that "1e999999999" cannot stall Fraction arithmetic.
_SCIENTIFIC = re.compile(rf"({_DECIMAL})\s*(?:[eE]|(?:\\times|\\cdot|\*)\s*10\s*\^)\s*\{{?\s*([+-]?\d{{1,3}})\s*\}}?")
_SLASH_FRACTION = re.compile(rf"({_DECIMAL})\s*/\s*({_DECIMAL})")
_LATEX_FRACTION = re.compile(
    rf"([+-]?)\s*\\frac\s*(?:\{{\s*({_DECIMAL})\s*\}}|(\d))\s*(?:\{{\s*({_DECIMAL})\s*\}}|(\d))"
)


def _parse_numeral(text: str) -> tuple[Fraction, int | None] | None:
    """An exact value, and the decimal places it was written with (None for fractions and powers)."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return Fraction(text), len(text.partition(".")[2])
    if match := _SCIENTIFIC.fullmatch(text):
        return Fraction(match.group(1)) * Fraction(10) ** int(match.group(2)), None
    if match := _SLASH_FRACTION.fullmatch(text):
        numerator, denominator = Fraction(match.group(1)), Fraction(match.group(2))
    elif match := _LATEX_FRACTION.fullmatch(text):
        numerator = Fraction(match.group(2) or match.group(3)) * (-1 if match.group(1) == "-" else 1)
        denominator = Fraction(match.group(4) or match.group(5))
    else:
        return None
    return (numerator / denominator, None) if denominator else None


def _has_finite_decimal(value: Fraction) -> bool:
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def _numerals_equal(pred: tuple[Fraction, int | None], truth: tuple[Fraction, int | None]) -> bool:
    """Exact equality, except that a decimal may stand for a fraction such as 1/3 that has none.

    Such a decimal is compared at the precision it is written to: any precision for the ground
    truth, at least two decimal places for the prediction (so "0.3" is not 1/3).
    """
    (pred_value, pred_places), (truth_value, truth_places) = pred, truth
    if pred_value == truth_value:
        return True
    if truth_places and not _has_finite_decimal(pred_value):
        return round(pred_value, truth_places) == truth_value
    if pred_places and pred_places >= 2 and not _has_finite_decimal(truth_value):
        return round(truth_value, pred_places) == pred_value
    return False


def _parse_point(text: str) -> tuple[str, list[tuple[Fraction, int | None]]] | None:
    """A numeric tuple such as "(1/2, 3)" or "[0, 1]": its bracket pair and its components."""
    if len(text) < 2 or text[0] not in "([" or text[-1] not in ")]":
        return None
    components = [_parse_numeral(part) for part in _split_top_level(text[1:-1], ",")]
    if len(components) < 2 or None in components:
        return None
    return text[0] + text[-1], components


def _points_equal(pred: tuple, truth: tuple) -> bool:
    (pred_brackets, pred_values), (truth_brackets, truth_values) = pred, truth
    return (pred_brackets == truth_brackets and len(pred_values) == len(truth_values)
            and all(map(_numerals_equal, pred_values, truth_values)))


_UNITS = {
    "%": ("%", "percent"),
    "°": ("°", "degrees", "degree", "deg", "度"),
    "°C": ("°C", "degrees celsius", "摄氏度"),
    "°F": ("°F", "degrees fahrenheit"),
    "rad": ("rad", "radians", "radian"),
    "mm": ("mm", "millimeters", "millimeter", "millimetres", "millimetre", "毫米"),
    "cm": ("cm", "centimeters", "centimeter", "centimetres", "centimetre", "厘米"),
    "m": ("m", "meters", "meter", "metres", "metre", "米"),
    "km": ("km", "kilometers", "kilometer", "kilometres", "kilometre", "千米", "公里"),
    "in": ("in", "inches", "inch"),
    "ft": ("ft", "feet", "foot"),
    "mi": ("mi", "miles", "mile"),
    "mm^2": ("mm^2", "平方毫米"),
    "cm^2": ("cm^2", "平方厘米"),
    "m^2": ("m^2", "平方米"),
    "km^2": ("km^2", "平方千米", "平方公里"),
    "cm^3": ("cm^3", "立方厘米"),
    "m^3": ("m^3", "立方米"),
    "mL": ("mL", "ml", "milliliters", "millilitres", "毫升"),
    "L": ("L", "liters", "liter", "litres", "litre", "升"),
    "mg": ("mg", "milligrams", "毫克"),
    "g": ("g", "grams", "gram", "克"),
    "kg": ("kg", "kilograms", "kilogram", "千克", "公斤"),
    "t": ("tons", "ton", "tonnes", "tonne", "吨"),
    "lb": ("lb", "lbs"),
    "s": ("s", "sec", "seconds", "second", "秒"),
    "min": ("min", "minutes", "minute", "分钟"),
    "h": ("h", "hr", "hrs", "hours", "hour", "小时"),
    "day": ("days", "day", "天"),
    "year": ("years", "year", "年", "岁"),
    "m/s": ("m/s", "米/秒", "米每秒"),
    "km/h": ("km/h", "kph", "千米/时", "千米每小时"),
    "N": ("N", "newtons", "newton"),
    "J": ("J", "joules", "joule"),
    "W": ("W", "watts", "watt"),
    "V": ("V", "volts", "volt"),
    "A": ("A", "amperes", "ampere", "amps"),
    "Ω": ("Ω", r"\Omega", "ohms", "ohm"),
    "Pa": ("Pa", "pascals", "pascal"),
    "Hz": ("Hz", "hertz"),
    "$": ("dollars", "dollar", "美元"),
    "€": ("euros", "euro"),
    "元": ("元", "yuan", "块"),
    "个": ("个",),
    "人": ("人", "people", "persons"),
}
_CURRENCY_PREFIXES = {"$": "$", "€": "€", "£": "£", "¥": "元"}
# Longest first, so that "cm^2" wins over "m^2" and "千米" over "米"; "^{2}" is spelled too.
_UNIT_ALIASES = sorted(
    {(spelling, unit) for unit, aliases in _UNITS.items() for alias in aliases
     for spelling in (alias, re.sub(r"\^(\d)", r"^{\1}", alias))},
    key=lambda pair: -len(pair[0]),
)
# What may stand before a unit: a number, a bracketed or braced expression, or a LaTeX symbol.
_UNIT_HEAD = re.compile(r"(?:[\d)\]}!]|\\[A-Za-z]+)$")


def _split_unit(text: str) -> tuple[str, str | None]:
    """(the value without its unit, the canonical unit or None)."""
    if text[:1] in _CURRENCY_PREFIXES and _UNIT_HEAD.search(text[1:].strip()):
        return text[1:].strip(), _CURRENCY_PREFIXES[text[0]]
    for alias, unit in _UNIT_ALIASES:
        head, tail = text[:-len(alias)], text[-len(alias):]
        spelled = alias.isascii() and alias.isalpha()
        if tail != alias and not (spelled and len(alias) > 2 and tail.lower() == alias):
            continue
        # A one-letter unit needs a space: "2x" and "2m" are read as algebra, "2 m" as a length.
        if spelled and len(alias) == 1 and not head[-1:].isspace():
            continue
        if _UNIT_HEAD.search(head.rstrip()):
            return head.rstrip(), unit
    return text, None


# --- Multiple-choice letters -------------------------------------------------------------------

_CHOICE_TRUTH_BARE = re.compile(r"[(\[]?([A-H])[)\]]?[.:]?")
_CHOICE_TRUTH_WITH_TEXT = re.compile(r"(?:\(([A-H])\)|([A-H])[.:)])\s*(.+)", re.S)
_CHOICE_PRED_BARE = re.compile(r"[(\[]?\s*([A-Ha-h])\s*[)\]]?[.:]?")
# (priority, form); in running text only a capital counts as a letter, so that "the answer is
# a triangle" is not option A, except inside parentheses where "(b)" is unambiguous.
_CHOICE_PRED_FORMS = (
    (10, re.compile(r"(?<![A-Za-z])(?i:answer|option|choice)(?:\s+is)?\s*:?\s*[(\[]?([A-H])(?![A-Za-z0-9])")),
    (8, re.compile(r"(?<![\w\\])\(([A-Ha-h])\)")),
    (6, re.compile(r"(?<![\w\\.])([A-H])[.):](?![A-Za-z0-9])")),
)


def _choice_truth(truth: str) -> tuple[str, str] | None:
    """(letter, option text or "") when the ground truth names a multiple-choice option."""
    if match := _CHOICE_TRUTH_BARE.fullmatch(truth):
        return match.group(1), ""
    if match := _CHOICE_TRUTH_WITH_TEXT.fullmatch(truth):
        return match.group(1) or match.group(2), match.group(3).strip()
    return None


def _choice_letter(pred: str) -> str | None:
    """The option a prediction picks: a bare letter, else the highest-priority, earliest form."""
    pred = pred.replace("*", "").strip()
    if match := _CHOICE_PRED_BARE.fullmatch(pred):
        return match.group(1).upper()
    found = [(-priority, match.start(), match.group(1).upper())
             for priority, form in _CHOICE_PRED_FORMS for match in form.finditer(pred)]
    return min(found)[2] if found else None


# --- Text --------------------------------------------------------------------------------------

_QUOTES = re.compile("[\"`“”‘’!?]")
# Sentence punctuation only: "." and ":" inside a value ("2.5", "3:45", "a.b") are kept, and so
# are commas, which only remain inside brackets once an answer is split.
_SENTENCE_PUNCTUATION = re.compile(r"[.:](?=\s|$)|(?<!\w)[.:](?!\d)")
_SPACE_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")


def _normalise_text(text: str) -> str:
    text = _QUOTES.sub("", text.lower().replace("*", ""))
    text = _SPACE_AROUND_SYMBOL.sub(r"\1", _SENTENCE_PUNCTUATION.sub(" ", text))
    return " ".join(text.split())


# --- The math-verify fallback under a time limit ------------------------------------------------

_POWER_OR_FACTORIAL = re.compile(r"\^|\*\*|!")
_COSTLY_INSIDE = re.compile(r"\^|\*|!|\\cdot|\\times")
_BRACKET_PARTNER = {"{": "}", "(": ")", "}": "{", ")": "("}


def _leading_operand(text: str, word: str) -> str:
    """The bracketed group text starts with, else its leading run of the characters in word."""
    if text[:1] in _BRACKET_PARTNER:
        depth = 0
        for end, char in enumerate(text):
            depth += (char == text[0]) - (char == _BRACKET_PARTNER[text[0]])
            if depth == 0:
                return text[:end + 1]
        return text
    return re.match(f"[{word}]*", text).group()


def _too_costly_for_sympy(text: str) -> bool:
    """Powers and factorials whose exact value sympy would spend minutes computing.

    Python's big-integer arithmetic holds the GIL, so neither a signal nor a thread can cut it
    short: "10^{10^{10}}", "(10^{10})!" or "(9^{99})^{999}" must never reach sympy.
    """
    for match in _POWER_OR_FACTORIAL.finditer(text):
        # Operands before the operator are read on the reversed text.
        before = _leading_operand(text[:match.start()].rstrip()[::-1], r"\w.!")
        if match.group() == "!":
            operand, too_many_digits = before, 5
        else:
            rest = text[match.end():].lstrip()
            operand = _leading_operand(rest, r"\w.\\")
            if rest[len(operand):].lstrip().startswith(("^", "**")):
                return True
            # A power of a power or of a factorial multiplies exponents: keep the outer one small.
            too_many_digits = 3 if _COSTLY_INSIDE.search(before) else 6
        if _COSTLY_INSIDE.search(operand) or sum(char.isdigit() for char in operand) >= too_many_digits:
            return True
    return False


class _GradingTimeout(BaseException):
    """Raised from SIGALRM; a BaseException so that `except Exception` in sympy cannot swallow it."""


def _call_with_time_limit(check, limit_s: float) -> bool:
    """check() cut short by a SIGALRM timer after limit_s seconds (graded False past it).

    A timer the caller already has running is paused and then resumed with what it had left, less
    the time spent here. Signals reach only the main thread: called from another thread, check()
    runs without a limit (every stage grades in its main thread), and _too_costly_for_sympy still
    keeps out the inputs known to stall sympy.
    """
    if limit_s <= 0:
        return False
    if threading.current_thread() is not threading.main_thread():
        return check()
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _GradingTimeout

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_timer, previous_interval = signal.setitimer(signal.ITIMER_REAL, limit_s, 0.05)
    try:
        # The repeating tick re-raises should library code catch the first timeout with a bare except.
        return check()
    except _GradingTimeout:
        return False
    finally:
        # Cleared first, so that a tick still pending after the timer stops does nothing.
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer:
            left = max(previous_timer - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)


def _math_verify_equal(pred: str, truth: str) -> bool:
    # Wrapped in $…$: bare, math-verify extracts one number ("2x+1" → 2, "1.5e3" → 1.5).
    try:
        # LaTeX extraction only: the default also salvages a bare number from text it cannot
        # parse, which would grade "1<|im_end|>" or "1]7" as 1.
        latex = [LatexExtractionConfig()]
        gold = _mv_parse(f"${truth}$", extraction_config=latex, parsing_timeout=None)
        answer = _mv_parse(f"${pred}$", extraction_config=latex, parsing_timeout=None)
        return bool(gold and answer and _mv_verify(gold, answer, timeout_seconds=None))
    except Exception:  # a parser or sympy failure on odd input is a wrong answer, not a crash
        return False


def _math_verify_fallback(pred: str, truth: str, time_limit_s: float) -> bool:
    if _too_costly_for_sympy(pred) or _too_costly_for_sympy(truth):
        return False
    return _call_with_time_limit(lambda: _math_verify_equal(pred, truth), time_limit_s)


# --- The judge ---------------------------------------------------------------------------------


def _values_match(pred: str, truth: str, fallback) -> bool:
    """The per-value rules of §5.1 in order; fallback(pred, truth) decides what they cannot."""
    pred_point, truth_point = _parse_point(pred), _parse_point(truth)
    if pred_point and truth_point:
        return _points_equal(pred_point, truth_point)
    if choice := _choice_truth(truth):
        letter, option_text = choice
        if picked := _choice_letter(pred):
            return picked == letter
        # No letter: the prediction may still state the option's content.
        return bool(option_text) and _values_match(pred, option_text, fallback)
    if pred == truth:
        return True
    (pred_value, pred_unit), (truth_value, truth_unit) = _split_unit(pred), _split_unit(truth)
    # A bare number may omit the unit; two different units never match (no conversion).
    if pred_unit and truth_unit and pred_unit != truth_unit:
        return False
    pred_number, truth_number = _parse_numeral(pred_value), _parse_numeral(truth_value)
    if pred_number and truth_number:
        return _numerals_equal(pred_number, truth_number)
    if _normalise_text(pred_value) == _normalise_text(truth_value):
        return True
    return fallback is not None and fallback(pred_value, truth_value)


def grade_answer(prediction: str, truth: str, time_limit_s: float = 2.0) -> bool:
    """Whether the extracted answer matches the ground truth (spec §5.1 step 3, fixed per §0.1).

    Rule-based and deterministic; math-verify decides single values the rules cannot, within
    time_limit_s seconds (past it the answer is graded wrong).
    """
    if not (0 < len(prediction) < MAX_ANSWER_CHARS and 0 < len(truth) < MAX_ANSWER_CHARS):
        return False
    pred, gold = _normalise_answer(prediction), _normalise_answer(truth)
    if not pred or not gold:
        return False
    if _choice_truth(gold):  # "(B) 3, 4" is one option, not two values
        pred_parts, gold_parts = [pred], [gold]
    else:
        pred_parts, gold_parts = _split_answer(pred), _split_answer(gold)
    if len(pred_parts) != len(gold_parts):
        return False
    if len(gold_parts) > 1:  # as in the release, math-verify never judges multi-value answers
        return all(_values_match(p, g, None) for p, g in zip(pred_parts, gold_parts))
    fallback = partial(_math_verify_fallback, time_limit_s=time_limit_s)
    return _values_match(pred_parts[0], gold_parts[0], fallback)


def reward_parts(response_text: str, truth: str) -> tuple[float, float, float]:
    """Spec §5.1: (score, accuracy, format) with score = 0.8·acc + 0.2·format.

    Malformed → 0. An empty answer, or one of MAX_ANSWER_CHARS characters or more, earns the
    format part only; the judge never sees it.
    """
    parsed = parse_response(response_text)
    if not parsed.valid:
        return 0.0, 0.0, 0.0
    if not parsed.answer or len(parsed.answer) >= MAX_ANSWER_CHARS:
        return 0.2, 0.0, 1.0
    acc = float(grade_answer(parsed.answer, truth))
    return 0.8 * acc + 0.2, acc, 1.0
