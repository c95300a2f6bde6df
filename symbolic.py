"""Symbolic equivalence of two answers by math-verify, guarded: a per-call time limit, no prose, no blow-ups.

The grader (grading.py) decides what its rules can; `equivalent` decides the single values they cannot,
such as "2x+1" against "1+2x" or "3\\sqrt{2}" against "\\sqrt{18}". Around math-verify it adds what an RL
reward needs: a SIGALRM time limit per call, a refusal of powers and factorials that would stall sympy
before any signal could stop it, a refusal of prose (math-verify reads "maybe 15" as a product of
letters), and a relative tolerance for numeric results in place of math-verify's absolute one.
"""

import logging
import re
import signal
import threading
import time

from math_verify import LatexExtractionConfig
from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify

# equivalent() runs math-verify under its own time limit, so math-verify's are switched off; its
# warning that they are off would otherwise print once per process.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# Relative tolerance of two numbers that are not both integers (the release's); never an absolute one.
RELATIVE_TOLERANCE = 1e-6


def equivalent(pred: str, truth: str, time_limit_s: float) -> bool:
    """Whether math-verify finds two normalised single values equal, within time_limit_s seconds
    (False past it, and for prose or expressions too costly to evaluate)."""
    if not (_looks_like_math(pred) and _looks_like_math(truth)):
        return False
    if _too_costly_for_sympy(pred) or _too_costly_for_sympy(truth):
        return False
    for pattern, replacement in _PLAIN_TEXT_MATH:
        pred, truth = pattern.sub(replacement, pred), pattern.sub(replacement, truth)
    return _call_with_time_limit(lambda: _math_verify_equal(pred, truth), time_limit_s)


_POWER_OR_FACTORIAL = re.compile(r"\^|\*\*|!")
_COSTLY_INSIDE = re.compile(r"\^|\*|!|\\cdot|\\times")
_BRACKET_PARTNER = {"{": "}", "(": ")", "}": "{", ")": "("}
# Words a mathematical answer may contain; any other word makes it prose, which math-verify would
# turn into a product of letters.
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "lim", "max", "min",
               "det", "deg", "mod", "gcd", "lcm", "inf", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh"}
_PLAIN_TEXT_MATH = ((re.compile(r"\\?sqrt\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
                    (re.compile(r"(?<![\\A-Za-z])exp\s*\(([^()]*)\)"), r"e^{\1}"),
                    (re.compile(r"(?<![\\A-Za-z])(ln|log|sin|cos|tan)(?=\s*\()"), r"\\\1"),
                    (re.compile(r"(?<![\\A-Za-z])pi\b"), r"\\pi "), (re.compile(r"\*\*"), "^"),
                    (re.compile(r"(?<![\\A-Za-z])(?:infinity|inf)\b"), r"\\infty "))


def _looks_like_math(text: str) -> bool:
    words = re.findall(r"[A-Za-z]{3,}", re.sub(r"\\[A-Za-z]+", " ", text))
    return all(word.lower() in _MATH_WORDS for word in words) and not re.search(r"[^\x00-\x7fπΩ°µ]", text)


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
    """math-verify's verdict, with numeric results held to the relative tolerance: its own absolute
    tolerance would take any two values below about 1e-16 for equal."""
    # Wrapped in $…$: bare, math-verify extracts one number ("2x+1" → 2, "1.5e3" → 1.5).
    try:
        # LaTeX extraction only: the default also salvages a bare number from text it cannot
        # parse, which would grade "1<|im_end|>" or "1]7" as 1.
        latex = [LatexExtractionConfig()]
        gold = _mv_parse(f"${truth}$", extraction_config=latex, parsing_timeout=None)
        answer = _mv_parse(f"${pred}$", extraction_config=latex, parsing_timeout=None)
        if not (gold and answer and _mv_verify(gold, answer, timeout_seconds=None)):
            return False
        expected, given = gold[0], answer[0]
        if getattr(expected, "is_number", False) and getattr(given, "is_number", False):
            expected, given = complex(expected.evalf(30)), complex(given.evalf(30))
            return abs(expected - given) <= RELATIVE_TOLERANCE * max(abs(expected), abs(given))
        return True
    except Exception:  # a parser or sympy failure on odd input is a wrong answer, not a crash
        return False
