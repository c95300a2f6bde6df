"""The verifiable reward and the answer grader (spec §5.1, with the release's defects fixed: spec §0.1).

    reward = 0.8 · accuracy + 0.2 · format        accuracy = grade_answer(<answer> content, ground truth)

The grader is rule-based and deterministic; math-verify decides, under a per-call time limit, the
single values the rules cannot (symbolic.py). The rule order is written once, in grade_answer's docstring.
"""

import ast
import re
import unicodedata
from fractions import Fraction

from data import Example, parse_response
from quantities import canonical_unit, parse_quantity, quantities_equal
from symbolic import equivalent

# The caller's rule: an answer this long scores 0.2 without being judged. grade_answer applies
# the same cap to both sides so that every rule below only ever sees short strings.
MAX_ANSWER_CHARS = 1024


def reward_parts(response_text: str, truth, options: list[str] | None = None,
                 precision: int | None = None, response_format: str = "caption") -> tuple[float, float, float]:
    """Spec §5.1: (score, accuracy, format) with score = 0.8·acc + 0.2·format.

    Malformed → 0. An empty answer, or one of MAX_ANSWER_CHARS characters or more, earns the
    format part only; the judge never sees it. truth, options, precision: as grade_answer's;
    response_format: as data.parse_response's.
    """
    parsed = parse_response(response_text, response_format)
    if not parsed.valid:
        return 0.0, 0.0, 0.0
    if not parsed.answer or len(parsed.answer) >= MAX_ANSWER_CHARS:
        return 0.2, 0.0, 1.0
    acc = float(grade_answer(parsed.answer, truth, options, precision))
    return 0.8 * acc + 0.2, acc, 1.0


def example_reward(response_text: str, example: Example) -> tuple[float, float, float]:
    """reward_parts against an item's ground truth, with its options and stated precision."""
    return reward_parts(response_text, example.answer, example.choices, example.precision, example.response_format)


def grade_answer(prediction: str, truth, options: list[str] | None = None, precision: int | None = None,
                 time_limit_s: float = 2.0) -> bool:
    """Whether the extracted answer matches the ground truth (spec §5.1 step 3, fixed per §0.1).

    truth: a string, or a list of accepted answers (also when given as the text of a list literal,
    as MMMU stores some). options: the item's option texts in letter order (MathVista `choices`,
    MMMU `options`), if it has options. precision: the decimal places the item states (MathVista).

    The release's rules, in order: the multi-value split; per value coordinate tuples, the MCQ
    letter, string / number / text equality, then math-verify. This project's order, each rule a
    small function below, with the release's defects fixed (spec §0.1):

      0. both sides normalised: Unicode (NFKC, invisible characters, −, ½, x²), LaTeX delimiters and
         wrappers, synonyms (\\geq ≥ >= → \\ge, \\rightarrow → \\to, \\varnothing → \\emptyset),
         digit groups ("4,024,533", "2 718 281");
      1. several accepted answers: right if any one is (_accepted_answers);
      2. multiple choice, when the truth is a letter (any case, A–J or within the options), an
         option written "(X) text", or the text of one of the options: the one letter the
         prediction picks (_picked_letter: whole-answer letters, labels "Answer: b", "答案是C",
         verbs "Choose B", "G is correct", brackets, a letter before its option text; a negated
         letter is no pick, two different letters are a hedge, the article "a" is no letter), or,
         without a letter, the option's content stated as a value;
      3. several values (numbered items, ";", top-level "," or "and"): the same count, matched
         by name where both name them ("a=6, b=9"), else in order; no math-verify (as released);
      4. one value (_value_matches): equality; assignments "x = 5"; labelled points and tuples
         with bracket types; numbers with units (the same unit or a bare number; any case;
         counting words; an unknown unit is never dropped), integers exact, other numbers within
         a relative 1e-6, a decimal with ≥ 2 significant digits for a fraction at its own
         precision, the item's stated precision; normalised text; math-verify for what looks
         like mathematics, its numeric results held to the same relative tolerance;
      5. a prediction that states its value in a short sentence ("So the perimeter is 18 cm"):
         rules 3–4 on the stated value.
    """
    accepted = [_normalise_answer(t) for t in _accepted_answers(truth) if 0 < len(t) < MAX_ANSWER_CHARS]
    if not accepted or not 0 < len(prediction) < MAX_ANSWER_CHARS:
        return False
    pred = _normalise_answer(prediction)
    options = [_normalise_answer(str(o)) for o in options or []]
    if len(accepted) > 1 and _contradicts_units(pred, accepted):
        return False
    return bool(pred) and any(_answer_matches(pred, t, options, precision, time_limit_s) for t in accepted)


def _answer_matches(pred: str, truth: str, options: list[str], precision: int | None, limit_s: float) -> bool:
    """Rules 2–5 for one accepted answer."""
    if not truth:
        return False
    if pred == truth:
        return True
    if choice := _choice_truth(truth, options):
        return _choice_matches(pred, choice, options, limit_s)
    return any(_values_agree(value, truth, precision, limit_s) for value in _stated_values(pred)) or \
        _mentioned_alone(pred, truth)


# ----------------------------------------------------------------------------------------------
# 0. Normalisation
# ----------------------------------------------------------------------------------------------

_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2060\ufeff]")
# Leftover format tags around an answer: "<answer>4</answer>".
_FORMAT_TAGS = re.compile(r"</?answer>")
# Look-alikes NFKC would turn into letters: the ordinal indicator and the ring above, written as degrees.
_DEGREE_LOOKALIKES = str.maketrans({"º": "°", "˚": "°"})
# NFKC would turn "x²" into "x2" and "3½" into "31⁄2", so these are rewritten before it runs.
_SUPERSCRIPT_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_VULGAR_FRACTION = re.compile("([+-]?\\d*)([\u00bc-\u00be\u2150-\u215e\u2189])")
_CIRCLED_NUMBER = re.compile("[\u2460-\u2473]")
# What NFKC leaves alone: the minus sign, the fraction slash, symbols that LaTeX answers spell as
# commands, CJK punctuation and brackets.
_SYMBOLS = str.maketrans({
    "\u2212": "-", "\u2044": "/", "π": r"\pi ", "∞": r"\infty ", "√": r"\sqrt ", "×": r"\times ",
    "·": r"\cdot ", "÷": r"\div ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "→": r"\to ", "∅": r"\emptyset ",
    "。": ".", "、": ",", "【": "(", "】": ")", "⟨": "(", "⟩": ")", "〈": "(", "〉": ")", "±": r"\pm ",
    "∪": r"\cup ", "∩": r"\cap ", "∈": r"\in ", "⊂": r"\subset ", "⇒": r"\Rightarrow ",
    "⇔": r"\Leftrightarrow ", "∣": "|", "∠": r"\angle ",
    **{quote: '"' for quote in "「」『』《》«»‹›"},
    # Greek letters as their LaTeX commands, the spelling math-verify reads.
    **{chr(code): f"\\{name} " for code, name in zip(range(0x3B1, 0x3CA), (
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho varsigma sigma "
        "tau upsilon phi chi psi omega").split()) if name not in ("mu", "omicron", "varsigma")},  # μ: micro
})
_SYNONYMS = ((re.compile(r"\\geq(?![A-Za-z])|>="), r"\\ge "), (re.compile(r"\\leq(?![A-Za-z])|<="), r"\\le "),
             (re.compile(r"\\neq(?![A-Za-z])|!="), r"\\ne "),
             (re.compile(r"\\(?:long)?rightarrow(?![A-Za-z])|->"), r"\\to "),
             (re.compile(r"\\varnothing(?![A-Za-z])"), r"\\emptyset "), (re.compile(r"\\Omega(?![A-Za-z])"), "Ω"),
             (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"), (re.compile(r"\\mid(?![A-Za-z])"), "|"),
             (re.compile(r"(?<![\\A-Za-z])(?:infinity|inf)\b|\+\s*\\infty"), r"\\infty"),
             (re.compile(r"^(?:the )?empty set$|^no (?:real )?solutions?$", re.I), r"\\emptyset"),
             (re.compile(r"^<([^<>]+,[^<>]+)>$"), r"(\1)"), (re.compile(r"\^\{(\w)\}"), r"^\1"))
_MATH_DELIMITERS = (re.compile(r"\$\$(.+?)\$\$", re.S), re.compile(r"(?<!\\)\$(.+?)(?<!\\)\$", re.S),
                    re.compile(r"\\\((.+?)\\\)", re.S), re.compile(r"\\\[(.+?)\\\]", re.S))
_UNWRAPPED_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|boxed|operatorname)\s*\{")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREE_SIGN = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree")
_THIN_SPACE_IN_NUMBER = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")
_LATEX_SPACE = re.compile(r"\\[,;:! ]|\\q?quad(?![A-Za-z])|\\displaystyle|~")
# A proper digit grouping only: "4,024,533" or "2 718 281", but not "3,4" or "1,23".
_COMMA_GROUPS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d|,\d)")
_SPACE_GROUPS = re.compile(r"(?<![\d.])\d{1,3}(?: \d{3})+(?!\d| \d)")


def _vulgar_to_slash(match: re.Match) -> str:
    """"½" → "1/2", and a mixed number "-3½" → "-7/2", exactly."""
    numerator, denominator = unicodedata.normalize("NFKC", match.group(2)).split("\u2044")
    sign, whole = match.group(1)[:1], match.group(1).lstrip("+-")
    value = int(whole or 0) + Fraction(int(numerator), int(denominator))
    return f"{'-' if sign == '-' else ''}{value.numerator}/{value.denominator}"


def _bracket_depths(text: str, opening: str = "([{", closing: str = ")]}") -> list[int]:
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
    text = _FORMAT_TAGS.sub(" ", _INVISIBLE.sub("", text)).translate(_DEGREE_LOOKALIKES)
    text = _SUPERSCRIPT_RUN.sub(lambda m: "^{" + m.group().translate(_SUPERSCRIPT_DIGITS) + "}", text)
    text = _VULGAR_FRACTION.sub(_vulgar_to_slash, text)
    text = _CIRCLED_NUMBER.sub(lambda m: f" ({ord(m.group()) - 0x245F}) ", text)
    text = unicodedata.normalize("NFKC", text).translate(_SYMBOLS)
    for delimiters in _MATH_DELIMITERS:
        text = delimiters.sub(r"\1", text)
    for pattern, replacement in _SYNONYMS:
        text = pattern.sub(replacement, text)
    text = _LEFT_RIGHT.sub("", _unwrap_commands(text)).replace(r"\{", "{").replace(r"\}", "}")
    text = _DEGREE_SIGN.sub("°", text).replace(r"\%", "%").replace(r"\$", "$").replace("{,}", ",")
    text = " ".join(_LATEX_SPACE.sub(" ", _THIN_SPACE_IN_NUMBER.sub("", text)).split())
    # Inside brackets a comma separates coordinates: "(1,234)" is a point, not 1234.
    depths = _bracket_depths(text, "([", ")]")
    text = _COMMA_GROUPS.sub(lambda m: m.group() if depths[m.start()] else m.group().replace(",", ""), text)
    return _strip_value(_SPACE_GROUPS.sub(lambda m: m.group().replace(" ", ""), text))


_WRAPPERS = (("(", ")"), ("[", "]"), ("{", "}"), ('"', '"'), ("'", "'"), ("**", "**"), ("`", "`"))


def _wraps(text: str, opening: str, closing: str) -> bool:
    """Whether one pair of `opening … closing` encloses the whole text: "(x+1)", not "(x+1)(x-1)"."""
    if len(text) <= len(opening) + len(closing) or not (text.startswith(opening) and text.endswith(closing)):
        return False
    if opening == closing:
        return opening not in text[len(opening):-len(closing)]
    return all(depth > 0 for depth in _bracket_depths(text, opening, closing)[1:])


def _strip_value(text: str) -> str:
    """Outer spaces, separators, a final full stop and wrappers that hold one value: "(square)", "**7**"."""
    text = " ".join(text.split()).strip(",; ")
    text = text[:-1].rstrip() if text.endswith(".") else text
    for opening, closing in _WRAPPERS:
        if _wraps(text, opening, closing) and "," not in text:
            return _strip_value(text[len(opening):-len(closing)])
    return text


# ----------------------------------------------------------------------------------------------
# 1. Several accepted answers
# ----------------------------------------------------------------------------------------------


def _contradicts_units(pred: str, accepted: list[str]) -> bool:
    """"12 mm" against ["12 cm", "12"]: a unit none of the accepted answers has, where some have one."""
    units = {q.unit for t in accepted if (q := parse_quantity(t)) and q.unit}
    stated = parse_quantity(pred)
    return bool(units and stated and stated.unit and stated.unit not in units)


def _accepted_answers(truth) -> list[str]:
    """A list of accepted answers, from a list or from the text of a list literal of strings."""
    if isinstance(truth, (list, tuple)):
        return [str(t) for t in truth if t is not None]
    if truth is None:
        return []
    truth = str(truth)
    stripped = truth.strip()
    if stripped.startswith("[") and stripped.endswith("]") and len(stripped) < MAX_ANSWER_CHARS:
        try:
            members = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            members = None
        # Strings only: "[1, 2]" is an interval, "['Lyon', 'France']" two accepted answers.
        if isinstance(members, list) and members and all(isinstance(m, str) for m in members):
            return members
    return [truth]


# ----------------------------------------------------------------------------------------------
# 2. Multiple choice
# ----------------------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DEFAULT_LETTERS = _LETTERS[:10]  # MMMU-Pro has ten options, A–J
_BARE_LETTER = re.compile(r"[(\[{]?\s*([A-Za-z])\s*[)\]}]?[.:]?")
_LETTER_AND_TEXT = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.+)", re.S)  # a truth "(B) 30", "B. Yes"
_LETTER_THEN_TEXT = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?\s+(.+)", re.S)  # a prediction "D 45", "C. 45°"
_LABEL = r"(?:answer|option|choice|choose|chose|pick|select|go with|答案|选项|选择|应选|故选|选)"
_DECISIVE = (
    re.compile(rf"(?<![A-Za-z])(?i:{_LABEL})(?:\s+(?:is|would be|should be|will be))?\s*[:是为]?\s*(?i:option\s+)?"
               r"[(\[]?\s*([A-Za-z])(?![A-Za-z0-9])"),
    re.compile(r"(?<![A-Za-z])([A-Z])\s+is\s+(?:the\s+)?(?:correct|right|best|answer)"),
)
_MENTIONS = (
    re.compile(r"(?<![A-Za-z0-9\\])[(\[]\s*([A-Za-z])\s*[)\]]"),  # (b), [C]
    re.compile(r"^([A-Z])(?:[.:)]|\s)"),  # a letter before its option's text: "D 45", "C. decreasing"
    re.compile(r"(?<![A-Za-z0-9\\.])([A-Z])[.):](?![A-Za-z0-9])"),  # "B." in running text
    re.compile(r"(?<![A-Za-z0-9_\\'])([A-Z])(?![A-Za-z0-9_'])"),  # a capital standing alone: "A or C", "是C", "C项"
)
# A letter right after these is not picked ("Not (D) but (B)"), nor one right before the second ("B is wrong").
_NEGATION = re.compile(r"(?:\bnot|n't|\brather than|\binstead of|\bexcept|不是|非)\s*[(\[]?\s*$", re.I)
_REJECTED = re.compile(r"[)\]]?\s*(?:is|was)\s+(?:not\b|incorrect|wrong|false)", re.I)
# Letters offered as alternatives: "选A或B", "Answer: B or D", "B/C".
_ALTERNATIVE = re.compile(r"(?<![A-Za-z])([A-Za-z])[)\]]?\s*(?:\bor\b|或|/|\band\b|&)\s*[(\[]?([A-Za-z])(?![A-Za-z])")
# "A" and "I" before a word are the article and the pronoun ("A triangle", "I think"), not options.
_WORD_AFTER = re.compile(r"\s+(?!or\b|and\b|is\b)[a-z]")


def _letter_range(options: list[str]) -> str:
    return _LETTERS[:len(options)] if options else _DEFAULT_LETTERS


def _choice_truth(truth: str, options: list[str]) -> tuple[str, str] | None:
    """(letter, option text or "") when the ground truth names a multiple-choice option: its letter,
    "(X) text" / "X. text", or the text of one of the item's options."""
    letters = _letter_range(options)
    if (match := _BARE_LETTER.fullmatch(truth)) and match.group(1).upper() in letters:
        letter = match.group(1).upper()
        return letter, options[letters.index(letter)] if options else ""
    if (match := _LETTER_AND_TEXT.fullmatch(truth)) and (match.group(1) or match.group(2)).upper() in letters:
        return (match.group(1) or match.group(2)).upper(), match.group(3).strip()
    for letter, option in zip(letters, options):
        if option and _value_matches(truth, option, None, 0):
            return letter, option
    return None


def _picked_letter(pred: str, letters: str) -> str | None:
    """The one option letter a prediction picks, or None (no letter, or a hedge between two).

    Decisive forms (a whole-answer letter, "the answer is c", "Answer: b", "选C", "Choose B",
    "G is correct") outrank mentions (brackets, a letter before its option's text, "B." or a capital
    standing alone); a negated letter is not picked, and two different letters of the deciding kind
    pick nothing. A lower-case letter counts only where it cannot be a word.
    """
    pred = pred.replace("*", "").strip()
    if match := _BARE_LETTER.fullmatch(pred):
        return match.group(1).upper() if match.group(1).upper() in letters else None

    def picked(forms, case_sensitive: bool) -> set[str]:
        found = set()
        for form in forms:
            for match in form.finditer(pred):
                letter, after = match.group(1), pred[match.end(1):]
                if letter.upper() not in letters or _NEGATION.search(pred[:match.start(1)]) or _REJECTED.match(after):
                    continue
                if letter.islower() and (case_sensitive or after.lstrip()[:1].isalpha()):
                    continue
                if letter in "AI" and _WORD_AFTER.match(after) and not after.startswith((".", ":", ")")):
                    continue
                found.add(letter.upper())
        return found

    if _HEDGE.search(pred):  # "I'm not sure, maybe B"
        return None
    decided = picked(_DECISIVE, case_sensitive=False)
    if not decided:
        decided = picked(_MENTIONS[:1], case_sensitive=False) | picked(_MENTIONS[1:], case_sensitive=True)
    for match in _ALTERNATIVE.finditer(pred):
        offered = {match.group(1).upper(), match.group(2).upper()}
        if offered & decided and offered <= set(letters):
            decided |= offered
    return decided.pop() if len(decided) == 1 else None


def _choice_matches(pred: str, choice: tuple[str, str], options: list[str], limit_s: float) -> bool:
    letter, option_text = choice
    letters = _letter_range(options)
    if picked := _picked_letter(pred, letters):
        # "C. 45°" where C is 60° and B is 45°: the letter and the option it quotes disagree.
        if options and (quoted := _LETTER_THEN_TEXT.fullmatch(pred)):
            named = [k for k, option in zip(letters, options) if _value_matches(quoted.group(2), option, None, 0)]
            if named and picked not in named:
                return False
        return picked == letter
    # No letter: the prediction may state the option's content.
    return bool(option_text) and any(_value_matches(value, option_text, None, limit_s)
                                     for value in _stated_values(pred))


# ----------------------------------------------------------------------------------------------
# 3. Several values
# ----------------------------------------------------------------------------------------------

# "(2)" right after a word is a call or a product, "f(2)", not an item marker; after the first
# marker, later ones may follow a value directly: "(1)6(2)9".
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x")
# (1) … (2) …, (a) … (b) …, (i) … (ii) …, and "1) … 2) …" at the start of a part.
_ITEM_MARKER = re.compile(r"(?<![A-Za-z)\]}])\((\d{1,2}|[a-z]|[ivx]{1,4})\)|(?:^|(?<=[;,]\s)|(?<=\s))(\d{1,2})\)")
_PLUS_MINUS = re.compile(r"(?P<name>[^=]*=\s*)?\\pm\s*(?P<value>.+)")
# What a name on the left of "=" may be: "x", "x_1", "AB", "f(x)", "\angle ABC" — no number, no operator.
_NAME = re.compile(r"(?:\\[A-Za-z]+\s*)?[A-Za-z][A-Za-z' ]*(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?")


def _assignment(text: str) -> tuple[str, str] | None:
    """(name, value) of "x = 5", "\angle ABC = 60°" or "f(x) = 2x"; None for anything else."""
    name, equals, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if equals and name and value and "=" not in value and _NAME.fullmatch(name):
        return " ".join(name.split()), value
    return None


_WORD_NAMED = re.compile(r"([A-Za-z]{2,}(?: [A-Za-z]{2,})?)\s*:?\s+([-+]?[\d.].*)")


def _named_value(part: str) -> tuple[str, str] | None:
    """A part of a several-value answer with its name: "x = 5", "Area = 24", "area 24", "mean: 5"
    (a word's case does not matter)."""
    named = _assignment(part) or ((m.group(1), m.group(2)) if (m := _WORD_NAMED.fullmatch(part)) else None)
    return None if named is None else (named[0].lower() if len(named[0]) > 1 else named[0], named[1])


def _split_top_level(text: str, separator: str) -> list[str]:
    depths = _bracket_depths(text)
    cuts = [i for i in range(len(text)) if text.startswith(separator, i) and depths[i] == 0]
    return [text[start + (len(separator) if k else 0):end]
            for k, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(text)]))]


def _split_answer(text: str) -> tuple[list[str], bool]:
    """(values, unordered): numbered items "(1) … (2) …", else top-level ";", ",", " and ", " or " or
    "\\cup"; the values of a set "{4, -1}", of roots "x = 4 or x = -1" or "\\pm 1" and of a union are unordered."""
    markers = []
    if plus_minus := _PLUS_MINUS.fullmatch(text):  # "\pm 1", "x = \pm 1": the two values
        name, value = plus_minus.group("name") or "", plus_minus.group("value")
        return [f"{name}-{value}", f"{name}{value}"], True
    kind = None  # the first marker decides: "1" numbers, "a" letters, "i" roman numerals
    for marker in _ITEM_MARKER.finditer(text):
        label = marker.group(1) or marker.group(2)
        if not markers:
            kind = {"1": "number", "a": "letter", "i": "roman"}.get(label)
        ordinal = int(label) if kind == "number" and label.isdigit() else \
            _ROMAN.index(label) + 1 if kind == "roman" and label in _ROMAN else \
            ord(label) - ord("a") + 1 if kind == "letter" and len(label) == 1 else None
        if ordinal == len(markers) + 1:
            markers.append(marker)
    unordered = _wraps(text, "{", "}") and "," in text
    if unordered:
        text = text[1:-1]
    if len(markers) >= 2 and markers[0].start() <= 2:
        ends = [marker.start() for marker in markers[1:]] + [len(text)]
        parts = [text[marker.end():end] for marker, end in zip(markers, ends)]
    else:
        parts = [text]
        for separator in (";", ",", " and ", " or ", "\\cup"):
            if len(parts := _split_top_level(text, separator)) > 1:
                unordered |= separator in (" or ", "\\cup")
                break
    parts = [_strip_value(part) for part in parts]
    return [part for part in parts if part] or [text], unordered


def _unnamed(parts: list[str]) -> list[str]:
    """Values in order: a lone round-bracketed tuple's components; named values ordered by name, as
    coordinates are ("y = 3, x = 2" → 2, 3); other parts as they are."""
    point = _parse_point(parts[0]) if len(parts) == 1 else None
    if point and point[0] == "()":
        return point[1]
    named = [_assignment(p) for p in parts]
    return [value for _, value in sorted(named)] if all(named) else parts


def _values_agree(pred: str, truth: str, precision: int | None, limit_s: float) -> bool:
    """Rule 3 where either side holds several values, else rule 4."""
    (pred_parts, _), (truth_parts, unordered) = _split_answer(pred), _split_answer(truth)
    if len(pred_parts) == len(truth_parts) == 1:
        return _value_matches(pred, truth, precision, limit_s)
    pred_named, truth_named = ([_named_value(p) for p in parts] for parts in (pred_parts, truth_parts))
    if all(pred_named) and all(truth_named) and len(pred_parts) == len(truth_parts):
        pred_by_name, truth_by_name = dict(pred_named), dict(truth_named)
        if pred_by_name.keys() == truth_by_name.keys() and len(pred_by_name) == len(pred_parts):
            return all(_value_matches(pred_by_name[k], v, None, 0) for k, v in truth_by_name.items())
    if len(pred_parts) != len(truth_parts) or all(pred_named) != all(truth_named):
        # "(3, -1)" or "y = -1, x = 3" against "3, -1": the values in order.
        pred_parts, truth_parts = _unnamed(pred_parts), _unnamed(truth_parts)
        if len(pred_parts) != len(truth_parts):
            return False
    # As released, math-verify never judges a multi-value answer: time limit 0.
    if not unordered:
        return all(_value_matches(p, t, None, 0) for p, t in zip(pred_parts, truth_parts))
    left = list(pred_parts)
    for t in truth_parts:
        match = next((p for p in left if _value_matches(p, t, None, 0)), None)
        if match is None:
            return False
        left.remove(match)
    return True


# ----------------------------------------------------------------------------------------------
# 4. One value
# ----------------------------------------------------------------------------------------------


def _value_matches(pred: str, truth: str, precision: int | None, limit_s: float) -> bool:
    """Rule 4; limit_s is math-verify's time limit (0: no math-verify)."""
    if pred == truth:
        return True
    pred_name, truth_name = _assignment(pred), _assignment(truth)
    if pred_name and truth_name:
        if pred_name[0] != truth_name[0]:
            return False
        pred, truth = pred_name[1], truth_name[1]
    elif pred_name and "=" not in truth:  # "x = 5" against "5"; "y - 2x = 3" against "y = 2x + 3" stays whole
        pred = pred_name[1]
    elif truth_name and "=" not in pred:
        truth = truth_name[1]
    pred_point, truth_point = _parse_point(pred), _parse_point(truth)
    if bool(pred_point) != bool(truth_point):  # "2 \le x < 5" against "[2, 5)"
        pred_point, truth_point = pred_point or _inequality_interval(pred), truth_point or _inequality_interval(truth)
    if pred_point and truth_point:
        (pred_brackets, pred_parts), (truth_brackets, truth_parts) = pred_point, truth_point
        return pred_brackets == truth_brackets and len(pred_parts) == len(truth_parts) and \
            all(_value_matches(p, t, None, limit_s) for p, t in zip(pred_parts, truth_parts))
    pred_quantity, truth_quantity = parse_quantity(pred), parse_quantity(truth)
    if pred_quantity and truth_quantity:
        verdict = quantities_equal(pred_quantity, truth_quantity, precision)
        if verdict is not None:
            return verdict
    (pred_value, pred_unit), (truth_value, truth_unit) = _trailing_unit(pred), _trailing_unit(truth)
    if pred_unit or truth_unit:  # an expression with a unit: "36\pi cm^2" against "36\pi"
        if pred_unit and truth_unit and pred_unit != truth_unit:
            return False
        return _value_matches(pred_value, truth_value, precision, limit_s)
    if _normalise_text(pred) == _normalise_text(truth):
        return True
    return limit_s > 0 and equivalent(pred, truth, limit_s)


_SET_BUILDER = re.compile(r"\{?\s*[a-z]\s*[|:]\s*(.+?)\}?")  # "{x | 1 \\le x < 4}" (its braces may be gone)
_INEQUALITY = re.compile(r"(?:(?P<low>[^<>\\]+?)\s*(?P<left><|\\le)\s*)?(?P<name>[a-z])\s*(?P<right><|\\le|>|\\ge)"
                         r"\s*(?P<bound>[^<>\\]+(?:\\infty)?)")


def _inequality_interval(text: str) -> tuple[str, list[str]] | None:
    """"2 \\le x < 5" → ("[)", ["2", "5"]); "x > 3" → ("()", ["3", "\\infty"]); "x \\in [2, 5)" and
    "{x | 1 \\le x < 4}" → their intervals."""
    if set_builder := _SET_BUILDER.fullmatch(text):
        text = set_builder.group(1).strip()
    if text.startswith(("x \\in", "x∈")):
        return _parse_point(text.split("in", 1)[-1].lstrip("∈ "))
    match = _INEQUALITY.fullmatch(text)
    if not match:
        return None
    low, left, right, bound = match.group("low"), match.group("left"), match.group("right"), match.group("bound")
    if low is None and right in (">", "\\ge"):
        return ("[" if right == "\\ge" else "(") + ")", [bound.strip(), "\\infty"]
    if right not in ("<", "\\le"):
        return None
    opening = "(" if low is None or left == "<" else "["
    return opening + ("]" if right == "\\le" else ")"), [low.strip() if low else "-\\infty", bound.strip()]


def _trailing_unit(text: str) -> tuple[str, str | None]:
    """(the value, its known unit) of an expression ending in a unit of two or more letters or a sign:
    "36\\pi cm^2" → ("36\\pi", "cm^2"); (text, None) when it ends in no known unit."""
    words = text.split()
    for k in (1, 2, 3):
        if len(words) > k and (unit := canonical_unit(" ".join(words[-k:]))) and (len(unit) > 1 or not unit.isalpha()):
            return " ".join(words[:-k]), unit
    return text, None


_POINT_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_']*\s*(?=[(\[])")


def _parse_point(text: str) -> tuple[str, list[str]] | None:
    """A tuple such as "(1/2, 3)", "[0, 1)" or the labelled "Q(2, 5)": its bracket pair and its components."""
    text = _POINT_LABEL.sub("", text)
    if len(text) < 2 or text[0] not in "([" or text[-1] not in ")]":
        return None
    parts = [_strip_value(p) for p in _split_top_level(text[1:-1], ",")]
    return (text[0] + text[-1], parts) if len(parts) >= 2 and all(parts) else None


# --- Text ---------------------------------------------------------------------------------------

_QUOTES = re.compile("[\"`“”‘’!?]")
_ABBREVIATION_DOT = re.compile(r"(?<=\b[a-z])\.(?=[a-z]\b|\s|$)")
# Sentence punctuation only: "." and ":" inside a value ("2.5", "3:45", "a.b") are kept, and so
# are commas, which only remain inside brackets once an answer is split.
_SENTENCE_PUNCTUATION = re.compile(r"[.:](?=\s|$)|(?<!\w)[.:](?!\d)")
_SPACE_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


# Yes and no as Chinese answers write them.
_VERDICTS = {"是": "yes", "是的": "yes", "对": "yes", "正确": "yes",
             "否": "no", "不是": "no", "不对": "no", "错误": "no"}


def _normalise_text(text: str) -> str:
    text = _QUOTES.sub("", text.lower().replace("*", ""))
    text = _ABBREVIATION_DOT.sub("", text)
    text = _SPACE_AROUND_SYMBOL.sub(r"\1", _SENTENCE_PUNCTUATION.sub(" ", text))
    text = _ARTICLE.sub("", " ".join(text.split()))
    return _VERDICTS.get(text, text)


# A value stated in a short sentence: what follows the last verb of statement, "=" or ":" (not "3:45").
_STATEMENT = re.compile(r"\b(?:is|are|was|were|equals?|equal to|becomes?|gives?|costs?|weighs?|measures?|has|have|"
                        r"totals?|makes?|comes to|gets?|yields?)\b|=|(?<!\d):|:(?!\d)|是|为|等于", re.I)
_HEDGE_OR_NEGATION = re.compile(r"\b(?:or|not|maybe|either|neither|nor|between)\b|n't", re.I)
_LEADING_VERDICT = re.compile(r"(yes|no|true|false)\s*[,.;:!—–-](?P<rest>.*)", re.I | re.S)
_VERDICT_WORD = re.compile(r"\b(?:yes|no|true|false)\b", re.I)
# A short sentence about "it": "It increases." → increases.
_PRONOUN_STATEMENT = re.compile(r"(?:it|they|this|that)\s+(?P<value>[A-Za-z]+(?:\s+[A-Za-z]+)?)", re.I)
# A value, then a sentence about it: "5. That is my final answer."
_VALUE_THEN_SENTENCE = re.compile(r"(?P<value>[^.!?]+?)\s*[.!]\s+(?P<rest>[A-Za-z][^\d]*\s[^\d]*)")
_HEDGE = re.compile(r"\b(?:or|maybe|perhaps|possibly|probably|might|could|unsure|not sure|either|unless|"
                    r"alternatively)\b", re.I)
# A closing remark in brackets that holds words and no number: "12 (final answer)".
_NAME_BEFORE = re.compile(r"(?:\\[A-Za-z]+\s*)?[A-Za-z][A-Za-z']*(?:_\{?\w+\}?)?\s*$")
_TRAILING_REMARK = re.compile(r"\s*\((?:(?=[^()]*[A-Za-z]{2})[^()\d]*|\s*not\s[^()]*)\)\s*\.?$", re.I)
_NOT_BUT = re.compile(r"not\s+[^,;]+?,?\s+but\s+(?P<value>.+)", re.I)  # "Not 4 but 6" → 6


def _stated_values(pred: str) -> list[str]:
    """The prediction, then what it states if written as a sentence, each once: "The answer is 7" → 7,
    "So the perimeter is 18 cm" → 18 cm, "Yes, the graph is symmetric." → Yes, "12 (final answer)" → 12.
    A statement whose value hedges or negates states nothing."""
    values = [pred]
    pred = _TRAILING_REMARK.sub("", pred)
    values.append(_strip_value(pred))
    if (verdict := _LEADING_VERDICT.match(pred)) and not _VERDICT_WORD.search(verdict.group("rest")):
        values.append(verdict.group(1))  # "Yes, because …", but not "Yes. No."
    if not_but := _NOT_BUT.fullmatch(pred):
        values.append(_strip_value(not_but.group("value")))
    if (pronoun := _PRONOUN_STATEMENT.fullmatch(pred)) and not _HEDGE_OR_NEGATION.search(pronoun.group("value")):
        values.append(pronoun.group("value"))
    if (sentence := _VALUE_THEN_SENTENCE.fullmatch(pred)) and not _HEDGE.search(sentence.group("rest")):
        values.append(_strip_value(sentence.group("value")))
    if statements := list(_STATEMENT.finditer(pred)):
        last = statements[-1]
        value = _strip_value(pred[last.end():])
        if value and len(value) <= 40 and not _HEDGE_OR_NEGATION.search(value):
            # After "=" the name stays with its value: "so AB = 6 cm" states "AB = 6 cm", not "BC = 6 cm".
            name = _NAME_BEFORE.search(pred[:last.start()]) if last.group() == "=" else None
            values.append(f"{name.group().strip()} = {value}" if name else value)
    return list(dict.fromkeys(values))



# A sentence that mentions the answer among words that cannot change it: "There are 3 red balls in the
# box." or "The planet Mercury". Words that add, contrast, hedge, negate or compare block it.
_BLOCKERS = re.compile(r"\b(?:not|no|never|or|and|but|then|while|whereas|except|than|vs|versus|maybe|perhaps|"
                       r"possibly|probably|might|could|either|neither|nor|between|about|approximately|around|"
                       r"roughly|nearly|almost|over|under|least|most|wrong|incorrect|false)\b|n't|[,;/]", re.I)
# Words, numbers, units and sentence punctuation only: mathematics ("\\pm 2") and markup ("<|image_pad|>1")
# are for the rules above.
_PROSE = re.compile(r"(?=.*[^\W\d_]{2})[\w\s.,:'\"!?()%°$€£·-]+")
_NUMBER_TOKEN = re.compile(r"[+-]?\d+(?:\.\d+)?(?:\s*(?:[^\W\d_]|[°%$€£Ω])[\w/^°]*(?:\s*\\cdot\s*\w+)*)?")


def _mentioned_alone(pred: str, truth: str) -> bool:
    """Rule 5's last resort: the truth is the only value a short sentence of words gives. A number truth
    must be its only number (a unit written with it must agree); a text truth appears once in at most 8 words."""
    if _BLOCKERS.search(pred) or not _PROSE.fullmatch(pred) or len(words := pred.split()) > 12:
        return False
    if expected := parse_quantity(truth):
        numbers = _NUMBER_TOKEN.findall(pred)
        stated = parse_quantity(numbers[0]) if len(numbers) == 1 else None
        return stated is not None and bool(quantities_equal(stated, expected, None))
    text, target = f" {_normalise_text(pred)} ", _normalise_text(truth)
    return len(words) <= 8 and bool(target) and text.count(f" {target} ") == 1
