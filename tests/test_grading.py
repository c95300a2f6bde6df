"""The answer judge (spec §5.1 step 3, with the release's defects fixed per §0.1).

Each `# release:` comment names what the release's rules did with that case.
"""

import json
import signal
import threading
import time
from pathlib import Path

import pytest

import symbolic
from grading import MAX_ANSWER_CHARS, grade_answer

CASES = [
    # --- multiple choice: the prediction's forms
    ("B", "B", True),
    ("b", "B", True),
    ("C", "B", False),
    ("(B)", "B", True),
    ("B.", "B", True),
    ("B)", "B", True),
    ("Option C", "C", True),  # release: form not recognised
    ("\\boxed{B}", "B", True),  # release: form not recognised
    ("（B）", "B", True),  # release: full-width parentheses not recognised
    ("the answer is C", "C", True),
    ("The answer is (D).", "D", True),
    ("I think (A), so the answer is C", "C", True),  # "answer is X" outranks "(X)"
    ("The answer is a triangle", "A", False),  # release: the article "a" read as option A
    ("A triangle", "A", False),
    # --- multiple choice: the ground truth's forms
    ("B", "B: 30", True),  # release: "B: 30" not an MCQ truth
    ("(B)", "B) 30", True),  # release: "B) 30" not an MCQ truth
    ("B", "B. Yes", True),  # release: missed
    ("B.", "(B) 30", True),
    ("Yes", "B. Yes", True),  # no letter given: the option's text is compared
    ("A", "B: 30", False),
    ("30", "B: 30", True),
    # --- numbers
    ("42", "42", True),
    ("42.0", "42", True),
    ("-5", "5", False),
    ("2.50", "2.5", True),
    ("3.14159", "3.14", False),
    ("1000001", "1000000", False),  # release: within the 1e-6 relative tolerance
    ("123456789012345679", "123456789012345678", False),  # release: accepted
    ("1.5e3", "1500", True),
    ("1.5e3", "1.5", False),  # release: math-verify fed "1.5e3" bare read it as 1.5
    ("1.5 \\times 10^{3}", "1500", True),
    ("2/3", "0.67", True),  # the truth is written to two places
    ("0.67", "2/3", True),
    ("0.7", "2/3", False),  # one decimal place is too coarse a prediction
    ("1/8", "0.13", False),  # 1/8 has an exact decimal, 0.125
    # --- percentages and units
    ("50%", "50", True),
    ("50", "50\\%", True),
    ("0.5", "50%", False),
    ("57 cm", "57 cm", True),
    ("57cm", "57 cm", True),
    ("57 kg", "57 cm", False),  # release: units stripped, never compared
    ("5 m", "5 min", False),  # release: accepted
    ("57", "57 cm", True),
    ("57 cm", "57", True),
    ("57厘米", "57 cm", True),
    ("30^\\circ", "30°", True),
    ("30 degrees", "30°", True),
    ("\\$5", "5 dollars", True),
    ("58 cm", "57 cm", False),
    # --- text normalisation keeps "." and ":" inside values
    ("x = 2.5", "x = 25", False),  # release: "." deleted
    ("3:45", "345", False),  # release: ":" deleted
    ("x=25", "x = 25", True),
    ("Yes", "yes.", True),
    ("**Yes**", "yes", True),
    ("no", "yes", False),
    ("\\text{Yes}", "yes", True),
    # --- LaTeX
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("$\\frac12$", "1/2", True),
    ("$42$", "42", True),
    ("\\(42\\)", "42", True),
    ("$$7$$", "7", True),
    ("5\\text{ cm}", "5 cm", True),
    ("\\boxed{17}", "17", True),
    # --- coordinate tuples
    ("(1, 2)", "(1,2)", True),
    ("(2, 1)", "(1, 2)", False),
    ("[1, 2]", "(1, 2)", False),  # release: bracket type ignored
    ("(1, 2, 3)", "(1, 2, 4)", False),  # release: only the first two numbers read
    ("(1, 2)", "(1, 2, 3)", False),
    ("(1/2, 3)", "(0.5, 3)", True),
    ("(1/2, 3)", "(2, 3)", False),  # release: "1/2" read as 2
    ("\\left(-1, 2\\right)", "(-1, 2)", True),
    ("(3,4)", "(34)", False),  # release: "(3,4)" collapsed to "(34)"
    # --- multi-value answers
    ("5; 7", "5;7", True),
    ("7; 5", "5; 7", False),
    ("(1) 5 (2) 7", "5, 7", True),
    ("(1) 5, (2) 8", "5; 7", False),
    ("1, 2, 3", "1, 2", False),
    ("Paris, France", "paris, france", True),
    ("①5 ②7", "5; 7", True),
    ("4,024,533", "4024533", True),  # release: split at the commas before removing them
    ("1,000", "1000", True),
    ("x = 1, y = 2", "x=1, y=2", True),
    # --- Unicode
    ("−5", "-5", True),  # release: U+2212 not normalised
    ("½", "0.5", True),  # release: missed
    ("3½", "3.5", True),
    ("π", "\\pi", True),  # release: missed
    ("Ｂ", "B", True),  # release: full-width letter missed
    ("４２", "42", True),
    ("x²", "x^2", True),
    # --- empty and blank
    ("", "5", False),
    ("   ", "5", False),
    ("5", "", False),
]


@pytest.mark.parametrize(("prediction", "truth", "expected"), CASES)
def test_grade_answer(prediction, truth, expected):
    assert grade_answer(prediction, truth) is expected


# Realistic answers a careful grader accepts or rejects, kind by kind: (prediction, truth, options,
# precision, verdict). Each kind is a rule of grade_answer, not a list of strings it knows.
KINDS = {
    "multiple choice": [
        ("(C)", "c", None, None, True),  # a lower-case truth letter
        ("The answer is c", "c", None, None, True),
        ("D 45", "(D) 45", None, None, True),  # a letter followed by its option's text
        ("C decreasing", "(C)", None, None, True),
        ("Choice: b", "B", None, None, True),  # a label and a colon, either case
        ("Answer: e", "E", None, None, True),
        ("Choose B.", "B", None, None, True),  # verb phrasing
        ("Pick B", "B", None, None, True),
        ("G is correct", "G.", None, None, True),
        ("答案：C", "C", None, None, True),  # CJK answer phrases
        ("答案是C", "C", None, None, True),
        ("选C", "C", None, None, True),
        ("The answer is J", "J", None, None, True),  # MMMU-Pro's ten options
        ("(B) or (D)", "B", None, None, False),  # two letters offered: a hedge
        ("B. 10 or D. 20", "(B) 10", None, None, False),
        ("Not (D) but (B)", "B", None, None, True),  # a negated letter is not an answer
        ("6", "6", ["3", "4", "5", "6"], None, True),  # the option's value instead of its letter
        ("D", "6", ["3", "4", "5", "6"], None, True),
        ("5", "6", ["3", "4", "5", "6"], None, False),
        ("C", "6", ["3", "4", "5", "6"], None, False),
    ],
    "units": [
        ("40 MM", "40 mm", None, None, True),  # any case
        ("3 KG", "3 kg", None, None, True),
        ("12 pieces", "12", None, None, True),  # counting words are units
        ("7 items", "7", None, None, True),
        ("5 times", "5", None, None, True),
        ("9 个", "9", None, None, True),
        ("4 张", "4", None, None, True),
        ("6 次", "6", None, None, True),
        ("8 条", "8", None, None, True),
        ("6次", "6 次", None, None, True),
        ("35N", "35 N", None, None, True),  # one-letter units against the number
        ("2.5L", "2.5 L", None, None, True),
        ("14 dm", "14 cm", None, None, False),  # an unknown unit is never dropped
        ("60 mph", "60 km/h", None, None, False),
    ],
    "numbers": [
        ("2 718 281", "2718281", None, None, True),  # digits grouped by spaces or thin spaces
        ("2\u2009718\u2009281", "2718281", None, None, True),
        ("0.3141590003", "0.314159", None, None, True),  # floating noise, relative 1e-6
        ("1000001", "1000000", None, None, False),  # integers stay exact
        ("1/3", "0.3", None, None, False),  # one significant digit is too coarse
        ("\\frac{2}{3}", "0.667", None, None, True),
        ("\\frac{1}{2^{50}}", "\\frac{1}{2^{51}}", None, None, False),  # small values compared relatively
        ("10^{-30}", "10^{-31}", None, None, False),
        ("2.348", "2.35", None, 2, True),  # the item's stated precision
        ("2.3", "2.35", None, 2, False),
    ],
    "points and several values": [
        ("Q(2, 5)", "(2, 5)", None, None, True),  # labelled points
        ("6 and 9", "6, 9", None, None, True),  # "and" and numbered markers separate values
        ("(1)6(2)9", "6, 9", None, None, True),
        ("a=6, b=9", "6, 9", None, None, True),  # assignments
        ("b=9, a=6", "a=6, b=9", None, None, True),  # matched by name
        ("b=6, a=9", "a=6, b=9", None, None, False),
        ("Lyon", "['Lyon', 'France']", None, None, True),  # several accepted answers
        ("Lyon", ["Lyon", "France"], None, None, True),
        ("Paris", ["Lyon", "France"], None, None, False),
    ],
    "text and LaTeX": [
        ("U.K.", "UK", None, None, True),  # dots and wrappers
        ("(square)", "square", None, None, True),
        ("【blue】", "blue", None, None, True),
        ("The answer is 7", "7", None, None, True),  # a value stated in a short sentence
        ("So the perimeter is 18 cm", "18", None, None, True),
        ("The answer is not 7", "7", None, None, False),
        ("\\geq 3", "\\ge 3", None, None, True),  # synonyms
        ("≥ 3", "\\geq 3", None, None, True),
        ("\\to", "\\rightarrow", None, None, True),
        ("\\varnothing", "\\emptyset", None, None, True),
        ("pi/3", "\\frac{\\pi}{3}", None, None, True),  # plain-text math
        ("-3*pi", "-3\\pi", None, None, True),
        ("8\u200b", "8", None, None, True),  # invisible characters
    ],
}


# Kinds a second labelled set (tests/data/grading_pairs_validation.jsonl, written by another careful grader)
# found; these are fresh members of each kind.
KINDS |= {
    "a letter that quotes another option's text": [
        ("A. 30°", "A", ["45°", "30°", "60°"], None, False),
        ("B. 30°", "B", ["45°", "30°", "60°"], None, True),
    ],
    "units in words and in compatibility characters": [
        ("3 meters per second", "3 m/s", None, None, True),
        ("5 m s^{-1}", "5 m/s", None, None, True),
        ("10 ㎡", "10 m²", None, None, True),
        ("4 miles per hour", "4 km/h", None, None, False),
        ("4\\sqrt{3} cm", "4\\sqrt{3}", None, None, True),  # an expression with its unit
        ("4\\sqrt{3} cm", "4\\sqrt{3} mm", None, None, False),
        ("5 kg", ["5 g", "5"], None, None, False),  # a unit no accepted answer has
    ],
    "numbers in words": [
        ("seven", "7", None, None, True),
        ("twenty-one", "21", None, None, True),
        ("2.5 thousand", "2500", None, None, True),
        ("4 million", "4", None, None, False),
        ("9000001", "9000000", None, None, False),  # two integers are matched exactly
    ],
    "named values, roots and sets": [
        ("y = 4, x = 1", "(1, 4)", None, None, True),  # coordinates by name
        ("y = 4, x = 1", "(4, 1)", None, None, False),
        ("x = 2 or x = -3", "x = -3 or x = 2", None, None, True),  # roots are unordered
        ("{5, 1}", "\\{1, 5\\}", None, None, True),
        ("x = 2", "x = -3 or x = 2", None, None, False),
        ("12 or 15", "12", None, None, False),
        ("⟨2, 0⟩", "(2, 0)", None, None, True),
        ("\\angle C = 45^\\circ", "45°", None, None, True),  # a named quantity
        ("AB = 6 cm", "BC = 6 cm", None, None, False),
        ("x \\ge 1", "[1, \\infty)", None, None, True),  # an inequality and its interval
        ("-2 < x \\le 3", "(-2, 3]", None, None, True),
        ("x > 1", "[1, \\infty)", None, None, False),
    ],
    "sentences, verdicts and symbols": [
        ("They decrease.", ["decrease", "decreases"], None, None, True),
        ("It does not decrease.", "decrease", None, None, False),
        ("No. Yes.", "No", None, None, False),
        ("是的", "是", None, None, True),
        ("答案是12", "12", None, None, True),
        ("30º", "30°", None, None, True),  # the ordinal indicator for the degree sign
        ("θ", "\\theta", None, None, True),
        ("<answer>B</answer>", "B", None, None, True),
    ],
}


# Kinds a third labelled set (tests/data/grading_pairs_heldout.jsonl) found; fresh members of each.
KINDS |= {
    "equations, functions, sets and intervals": [
        ("45 miles per hour", "45 mph", None, None, True),
        ("y - 3x = 1", "y = 3x + 1", None, None, True),  # an equivalent equation
        ("y - 3x = 1", "y = 3x - 1", None, None, False),
        ("exp(3)", "e^{3}", None, None, True),
        ("ln(5)", "\\ln 5", None, None, True),
        ("no solution", "\\emptyset", None, None, True),
        ("±2", "\\{-2, 2\\}", None, None, True),  # plus-minus is two values
        ("x = \\pm 3", "x = 3 or x = -3", None, None, True),
        ("\\pm 2", "2", None, None, False),
        ("(-inf, 0]", "(-\\infty, 0]", None, None, True),
        ("[1, +\\infty)", "[1, \\infty)", None, None, True),
        ("x < 0 or x > 1", "(-\\infty, 0) \\cup (1, \\infty)", None, None, True),  # a union
        ("\\{x \\mid -1 < x \\le 2\\}", "(-1, 2]", None, None, True),  # set-builder form
        ("<1, 0, -1>", "(1, 0, -1)", None, None, True),
    ],
    "named parts and lettered items": [
        ("length 8, width 3", "Length = 8, Width = 3", None, None, True),
        ("length 8, width 3", "Length = 3, Width = 8", None, None, False),
        ("(a) 4 (b) 0.25", "(a) 4, (b) 1/4", None, None, True),
    ],
    "the answer alone in a sentence": [
        ("The planet Venus", "Venus", None, None, True),
        ("There are 7 cats in the picture.", "7", None, None, True),
        ("There are 7 cats and 2 dogs.", "7", None, None, False),
        ("The value is less than 7", "7", None, None, False),
        ("The tallest bar is in 2015.", "2015", None, None, True),
        ("Yes — both lines are parallel.", "Yes", None, None, True),
        ("20 °C", "20 K", None, None, False),
        ("12 N·m", "12 N", None, None, False),
        ("4 squared", "4", None, None, False),
    ],
    "Chinese letters and numerals": [
        ("B项", "B", ["1", "2", "3"], None, True),
        ("不是A，是B", "B", ["1", "2", "3"], None, True),
        ("五", "5", None, None, True),
        ("三分之二", "\\frac{2}{3}", None, None, True),
        ("百分之四十", "40%", None, None, True),
        ("答案是：y=7", "7", None, None, True),
    ],
}


# Kinds a fourth labelled set (tests/data/grading_pairs_final.jsonl) found; fresh members of each.
KINDS |= {
    "markers, symbols, hedges and rejections": [
        ("110V", "110 v", None, None, True),  # a one-letter unit in either case
        ("5.9999999", "6", None, None, True),  # floating noise against an integer
        ("1) 7; 2) 12", "7, 12", None, None, True),
        ("(i) 3 (ii) 9", "3, 9", None, None, True),  # roman item markers
        ("(i) 3 (ii) 9", "9, 3", None, None, False),
        ("A \\cup B", "A ∪ B", None, None, True),
        ("p \\Rightarrow q", "p ⇒ q", None, None, True),
        ("Perhaps C", "C", ["1", "2", "3"], None, False),  # a hedged letter
        ("Not 5 but 9", "9", None, None, True),
        ("Not 5 but 9", "5", None, None, False),
        ("Answer: 14 (not 16)", "14", None, None, True),
    ],
}


@pytest.mark.parametrize(("prediction", "truth", "options", "precision", "expected"),
                         [case for cases in KINDS.values() for case in cases])
def test_grade_answer_kinds(prediction, truth, options, precision, expected):
    assert grade_answer(prediction, truth, options, precision) is expected


@pytest.mark.parametrize("name", ["grading_pairs", "grading_pairs_validation", "grading_pairs_heldout",
                                  "grading_pairs_final"])
def test_agreement_with_a_careful_grader_on_labelled_pairs(name):
    """tests/data/*.jsonl: answer pairs of many kinds, each set labelled by a careful grader who had not seen
    this code (scripts/grading_agreement.py prints the tables; README "How well the grader agrees" gives
    the agreement each set had when it was first measured). The goals: ≥ 98 % agreement, at most 3 % of
    right answers rejected, at most one wrong answer in 500 accepted."""
    rows = [json.loads(line) for line in (Path(__file__).parent / "data" / f"{name}.jsonl").open()]
    verdicts = [grade_answer(r["prediction"], r["truth"], r.get("options"), r.get("precision")) for r in rows]
    right = [v for v, r in zip(verdicts, rows) if r["verdict"]]
    wrong = [v for v, r in zip(verdicts, rows) if not r["verdict"]]
    assert sum(v == r["verdict"] for v, r in zip(verdicts, rows)) >= 0.98 * len(rows)
    assert right.count(False) <= 0.03 * len(right) and wrong.count(True) == 0


def test_math_verify_decides_what_the_rules_cannot():
    assert grade_answer("2x+1", "1+2x")
    assert grade_answer("\\sqrt{4}", "2")
    assert not grade_answer("2x+1", "2")  # release: math-verify fed "2x+1" bare kept only the 2
    assert not grade_answer("2x+1", "2x-1")


def _grade_timed(prediction, truth, time_limit_s, in_thread):
    """(verdict, wall seconds) of one grade_answer call, in this thread or a new one."""
    verdict = []
    start = time.monotonic()
    if in_thread:
        worker = threading.Thread(target=lambda: verdict.append(
            grade_answer(prediction, truth, time_limit_s=time_limit_s)))
        worker.start()
        worker.join(10)
    else:
        verdict.append(grade_answer(prediction, truth, time_limit_s=time_limit_s))
    return verdict[0] if verdict else None, time.monotonic() - start


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
@pytest.mark.parametrize("crafted", ["10^{10^{10^{10}}}", "(10^{10})!", "9^{9^{9}}", "(99999^{99999})^{99999}"])
def test_crafted_expression_is_wrong_within_the_limit(crafted, in_thread):
    verdict, wall = _grade_timed(crafted, "1", 1.0, in_thread)
    assert verdict is False
    assert wall < 3.0


@pytest.fixture
def hanging_fallback(monkeypatch):
    """A math-verify stand-in that never returns (until released), so only the time limit ends it."""
    release = threading.Event()

    def parse(text, **kwargs):
        while not release.is_set():
            time.sleep(0.01)
        return []

    monkeypatch.setattr(symbolic, "_mv_parse", parse)
    monkeypatch.setattr(symbolic, "_mv_verify", lambda gold, answer, **kwargs: False)
    yield
    release.set()


def test_hanging_fallback_is_cut_at_the_time_limit(hanging_fallback):
    handler_before = signal.getsignal(signal.SIGALRM)
    verdict, wall = _grade_timed("2x+1", "1+2x", 1.0, in_thread=False)
    assert verdict is False
    assert 0.9 < wall < 3.0
    assert signal.getsignal(signal.SIGALRM) is handler_before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_timer_of_the_callers_own_is_left_running(hanging_fallback):
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        verdict, wall = _grade_timed("2x+1", "1+2x", 0.3, in_thread=False)
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert verdict is False and wall < 3.0
    assert 25.0 < remaining <= 30.0 and not fired


def test_oversized_answer_is_wrong_and_fast():
    start = time.monotonic()
    assert not grade_answer("1" * 100_000, "1" * 100_000)
    assert not grade_answer("(" * 50_000 + "1" + ")" * 50_000, "1")
    assert not grade_answer("1" * MAX_ANSWER_CHARS, "1" * MAX_ANSWER_CHARS)
    assert time.monotonic() - start < 0.5
    assert MAX_ANSWER_CHARS == 1024
