"""Numbers and units as answers write them: exact values, their written precision, and units by one name.

    parse_quantity("18 cm") → Quantity(18, "cm");  parse_quantity("2.5 thousand") → 2500;  "\\frac{1}{2^{50}}" exact
    numbers_equal: an integer truth exactly, a decimal for a fraction at its own precision, else within a
                   relative 1e-6, or at the item's stated precision
    quantities_equal: the same unit or a bare number on one side; never a conversion

Part of the answer grader (grading.py), on its own so that each of the two reads in one sitting.
"""

import re
from dataclasses import dataclass
from fractions import Fraction

from symbolic import RELATIVE_TOLERANCE

# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER = re.compile(_DECIMAL)
# Exponents are capped at three digits so that "1e999999999" cannot stall Fraction arithmetic.
_EXPONENT = r"\^\s*\{?\s*([+-]?\d{1,3})\s*\}?"
_SCIENTIFIC = re.compile(rf"({_DECIMAL})\s*(?:[eE]\s*([+-]?\d{{1,3}})|(?:\\times|\\cdot|\*|x)\s*10\s*{_EXPONENT})")
_POWER = re.compile(rf"([+-]?\d{{1,6}}){_EXPONENT}")
_SLASH_FRACTION = re.compile(r"(.+?)\s*/\s*(.+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\s*\\frac\s*(?:\{(.+?)\}|(\d))\s*(?:\{(.+)\}|(\d))")


@dataclass(frozen=True)
class Number:
    """An exact value, and the decimal places and significant digits it was written with (decimals only)."""

    value: Fraction
    places: int | None = None
    significant: int | None = None


def parse_number(text: str, nested: bool = False) -> Number | None:
    """Decimals, scientific notation, integer powers ("2^{50}", "10^{-30}") and fractions of these."""
    text = text.strip()
    if text[:1] in "({" and text[-1:] in ")}" and not nested:
        text = text[1:-1].strip()
    if _PLAIN_NUMBER.fullmatch(text):
        digits = text.lstrip("+-").replace(".", "").lstrip("0")
        return Number(Fraction(text), len(text.partition(".")[2]), len(digits) if "." in text else None)
    if match := _SCIENTIFIC.fullmatch(text):
        return Number(Fraction(match.group(1)) * Fraction(10) ** int(match.group(2) or match.group(3)))
    if match := _POWER.fullmatch(text):
        return Number(Fraction(int(match.group(1))) ** int(match.group(2)))
    if nested:
        return None
    if match := _LATEX_FRACTION.fullmatch(text):
        sign = -1 if match.group(1) == "-" else 1
        numerator, denominator = (parse_number(match.group(k) or match.group(k + 1), True) for k in (2, 4))
    elif match := _SLASH_FRACTION.fullmatch(text):
        sign, (numerator, denominator) = 1, (parse_number(match.group(k), True) for k in (1, 2))
    else:
        return None
    if numerator is None or denominator is None or denominator.value == 0:
        return None
    return Number(sign * numerator.value / denominator.value)


def _has_finite_decimal(value: Fraction) -> bool:
    denominator = value.denominator
    for prime in (2, 5):
        while denominator % prime == 0:
            denominator //= prime
    return denominator == 1


def numbers_equal(pred: Number, truth: Number, precision: int | None) -> bool:
    """The item's stated precision if any; else exact for two integers; a decimal with at least two
    significant digits equals a fraction that has no finite decimal (1/3, 2/3) at its own precision;
    otherwise within the relative tolerance, never an absolute one (1e-30 ≠ 1e-31)."""
    if precision is not None:
        return round(pred.value, precision) == round(truth.value, precision)
    if pred.value == truth.value:
        return True
    if pred.value.denominator == 1 and truth.value.denominator == 1:  # integers exactly: 1000001 ≠ 1000000
        return False
    for decimal, other in ((pred, truth), (truth, pred)):
        if decimal.places and (decimal.significant or 0) >= 2 and not _has_finite_decimal(other.value):
            return round(other.value, decimal.places) == decimal.value
    scale = max(abs(pred.value), abs(truth.value))
    return abs(pred.value - truth.value) < RELATIVE_TOLERANCE * scale


# ----------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------

_UNITS = {
    "%": ("%", "percent"), "°": ("°", "degrees", "degree", "deg", "度"), "°C": ("°C", "degrees celsius", "摄氏度"),
    "°F": ("°F", "degrees fahrenheit"), "K": ("K", "kelvin"), "rad": ("rad", "radians", "radian"),
    "mm": ("mm", "millimeters", "millimeter", "millimetres", "millimetre", "毫米"),
    "cm": ("cm", "centimeters", "centimeter", "centimetres", "centimetre", "厘米"),
    "dm": ("dm", "decimeters", "decimeter", "decimetres", "decimetre", "分米"),
    "m": ("m", "meters", "meter", "metres", "metre", "米"),
    "km": ("km", "kilometers", "kilometer", "kilometres", "kilometre", "千米", "公里"),
    "in": ("in", "inches", "inch"), "ft": ("ft", "feet", "foot"), "mi": ("mi", "miles", "mile"),
    "mm^2": ("mm^2", "平方毫米"), "cm^2": ("cm^2", "平方厘米", "square centimeters"),
    "m^2": ("m^2", "平方米", "square meters", "square metres"), "km^2": ("km^2", "平方千米", "平方公里"),
    "cm^3": ("cm^3", "立方厘米", "cubic centimeters"), "m^3": ("m^3", "立方米", "cubic meters"),
    "mL": ("ml", "milliliters", "millilitres", "毫升"), "L": ("L", "liters", "liter", "litres", "litre", "升"),
    "mg": ("mg", "milligrams", "milligram", "毫克"), "g": ("g", "grams", "gram", "克"),
    "kg": ("kg", "kilograms", "kilogram", "千克", "公斤"), "t": ("tons", "ton", "tonnes", "tonne", "吨"),
    "lb": ("lb", "lbs", "pounds", "pound"), "s": ("s", "sec", "secs", "seconds", "second", "秒"),
    "min": ("min", "mins", "minutes", "minute", "分钟"), "h": ("h", "hr", "hrs", "hours", "hour", "小时"),
    "day": ("days", "day", "天"), "year": ("years", "year", "yr", "年", "岁"),
    "m/s": ("m/s", "米/秒", "米每秒"), "km/h": ("km/h", "kph", "千米/时", "千米每小时"), "mi/h": ("mph",),
    "N": ("N", "newtons", "newton"), "J": ("J", "joules", "joule"), "W": ("W", "watts", "watt"),
    "V": ("V", "volts", "volt"), "A": ("A", "amperes", "ampere", "amps", "amp"), "Ω": ("Ω", "ohms", "ohm"),
    "Pa": ("pa", "pascals", "pascal"), "Hz": ("hz", "hertz"),
    "$": ("$", "dollars", "dollar", "美元"), "€": ("€", "euros", "euro"), "£": ("£", "pounds sterling"),
    "元": ("元", "yuan", "块"), "人": ("人", "people", "persons", "person"),
    # Counting words (the release's list has 个): a count of things, whatever they are.
    "count": ("个", "张", "次", "条", "只", "本", "颗", "辆", "根", "支", "朵", "位", "名", "件", "棵", "头", "匹",
              "pieces", "piece", "items", "item", "times", "time", "pcs", "units", "unit"),
}
# Words after a number that change its value rather than name a unit: the magnitudes multiply it.
_MAGNITUDES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_MULTIPLIERS = {*_MAGNITUDES, "dozen", "squared", "cubed", "half"}
_NUMBER_WORDS = {word: k for k, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())} | {word: 10 * k for k, word in enumerate(
        "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_POWER_WORDS = re.compile(r"(?:(square|sq\.?)|(cubic|cu\.?))\s+(.+)")
_PER = re.compile(r"(.+?)\s+per\s+(.+)")
_POWER_DIGIT = re.compile(r"([a-z]+)\^?([23])")  # "cm2" (NFKC of ㎠), "m3"
# One-letter units that may stand against the number ("35N", "2.5L"); "2x" and "5m" stay algebra.
_ATTACHABLE = set("NJWVALK")
_UNIT_OF = {alias.lower() if len(alias) > 1 else alias: unit for unit, aliases in _UNITS.items() for alias in aliases}
_CURRENCY_PREFIXES = {"$": "$", "€": "€", "£": "£", "¥": "元"}
_UNIT_TEXT = r"(?:[^\W\d_]|[°%Ωµ$€£])(?:[^\W\d_]|[ /°%Ω·µ]|\^\{?-?[123]\}?)*"  # "cm", "km/h", "m^2", "m s^-1", "个"
_QUANTITY = re.compile(rf"(?P<number>.+?)(?P<space>\s*)(?P<unit>{_UNIT_TEXT})?")


@dataclass(frozen=True)
class Quantity:
    number: Number
    unit: str | None  # canonical for known units, else the lower-cased text
    algebra: bool = False  # a single lower-case letter written against the number: "5m" or 5·m?


def parse_quantity(text: str) -> Quantity | None:
    """A number with an optional unit before ($5) or after it (18 cm, 6次, 35N, 12 pieces)."""
    if text[:1] in _CURRENCY_PREFIXES and (number := parse_number(text[1:])):
        return Quantity(number, _CURRENCY_PREFIXES[text[0]])
    if text.startswith("百分之") and (number := number_in_words(text[3:])):  # "百分之三十" = 30%
        return Quantity(number, "%")
    if number := number_in_words(text):
        return Quantity(number, None)
    match = _QUANTITY.fullmatch(text)
    if not match or not (number := parse_number(match.group("number"))):
        return None
    unit = (match.group("unit") or "").strip().replace("{", "").replace("}", "")
    if not unit:
        return Quantity(number, None)
    canonical = canonical_unit(unit)
    if len(unit) == 1 and not match.group("space") and unit not in _ATTACHABLE and unit.isascii() and unit.isalpha():
        return Quantity(number, canonical or unit, algebra=True)
    lower = unit.lower()
    if canonical is None and (" " in lower or lower in _MULTIPLIERS):  # "7 is wrong", "3 thousand": no unit
        return None
    return Quantity(number, canonical or (lower.removesuffix("s") if len(lower) > 3 else lower))


_CHINESE_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
                   "九": 9}
_CHINESE_UNITS = {"十": 10, "百": 100, "千": 1000}


def _chinese_number(text: str) -> Fraction | None:
    """"三" = 3, "二十一" = 21, "一万两千" = 12000, "三点五" = 3.5, "负二" = -2, "二分之一" = 1/2."""
    if text.startswith("负"):
        value = _chinese_number(text[1:])
        return None if value is None else -value
    if "分之" in text:
        denominator, _, numerator = text.partition("分之")
        denominator, numerator = _chinese_number(denominator), _chinese_number(numerator)
        return numerator / denominator if denominator and numerator is not None else None
    whole, _, decimals = text.partition("点")
    if not whole or any(c not in _CHINESE_DIGITS for c in decimals):
        return None
    total = section = digit = 0
    for char in whole:
        if char in _CHINESE_DIGITS:
            digit = _CHINESE_DIGITS[char]
        elif char in _CHINESE_UNITS:
            section, digit = section + (digit or 1) * _CHINESE_UNITS[char], 0
        elif char == "万":
            total, section, digit = total + (section + digit) * 10_000, 0, 0
        else:
            return None
    value = Fraction(total + section + digit)
    return value + Fraction("0." + "".join(str(_CHINESE_DIGITS[c]) for c in decimals)) if decimals else value


def number_in_words(text: str) -> Number | None:
    """"five", "twenty-one", "12 thousand", "1.5 million", "二分之一": a number written (partly) in words."""
    if text and all(c in "负分之点万" or c in _CHINESE_DIGITS or c in _CHINESE_UNITS for c in text):
        value = _chinese_number(text)
        return None if value is None else Number(value)
    words = text.lower().replace("-", " ").split()
    if words and words[-1] in _MAGNITUDES and (head := parse_number(" ".join(words[:-1])) or
                                               number_in_words(" ".join(words[:-1]))):
        return Number(head.value * _MAGNITUDES[words[-1]])
    if words and all(w in _NUMBER_WORDS for w in words) and len(words) <= 2 and \
            (len(words) == 1 or (_NUMBER_WORDS[words[0]] >= 20 and _NUMBER_WORDS[words[1]] < 10)):
        return Number(Fraction(sum(_NUMBER_WORDS[w] for w in words)))
    return None


def canonical_unit(unit: str) -> str | None:
    """A known unit's one name, whatever its case, plural or spelling ("sq cm" = "cm^2", "meters per
    second" = "m/s", "cm2" = "cm^2"); None if unknown."""
    lower = " ".join(unit.lower().replace("{", "").replace("}", "").split())
    if canonical := _UNIT_OF.get(unit) or _UNIT_OF.get(lower) or _UNIT_OF.get(lower.removesuffix("s")) or \
            _UNIT_OF.get(unit.swapcase() if len(unit) == 1 else ""):  # "220 v" = "220 V"
        return canonical
    if len(words := lower.split()) == 2 and words[1].endswith("^-1") and \
            (top := canonical_unit(words[0])) and (bottom := canonical_unit(words[1][:-3])):
        return f"{top}/{bottom}"  # "m s^-1" = "m/s"
    if (match := _POWER_WORDS.fullmatch(lower)) and (base := canonical_unit(match.group(3))):
        return f"{base}^{2 if match.group(1) else 3}"
    if (match := _PER.fullmatch(lower)) and (top := canonical_unit(match.group(1))) and \
            (bottom := canonical_unit(match.group(2))):
        return f"{top}/{bottom}"
    if (match := _POWER_DIGIT.fullmatch(lower)) and (base := canonical_unit(match.group(1))):
        return f"{base}^{match.group(2)}"
    return None


def quantities_equal(pred: Quantity, truth: Quantity, precision: int | None) -> bool | None:
    """Numbers with units: the same unit, or a bare number on either side (no conversion: "14 dm" ≠
    "14 cm", "60 mph" ≠ "60 km/h"). None where "5m" against a bare 5 could be algebra: undecided here."""
    if (pred.algebra and truth.unit is None) or (truth.algebra and pred.unit is None):
        return None
    if pred.unit and truth.unit and pred.unit != truth.unit:
        return False
    return numbers_equal(pred.number, truth.number, precision)
