"""Personal data in text swapped for reversible tokens, so that tool output can reach a model without the
customer's details and the model's answer can be filled back in with them.

What is found, and how look-alikes are kept out (a false token costs the model a fact, a miss leaks a value):
- email: a practical pattern, but not a URL's user:password@host, an SSH remote (git@host:repo) or an image
  named logo@2x.png.
- card: 14-19 digits, together or split by single spaces or dashes, with a known issuer's prefix and length
  and a Luhn check (stdnum.luhn).
- iban: with or without spaces in groups of 4, checked by stdnum.iban (the country's length and mod 97).
- phone: candidates checked by phonenumbers. International numbers (+ or 00) in any region; national ones in
  PHONE_REGIONS, and only when written as a phone number is (groups, an area code in brackets) or after a
  word such as "phone" or "Tel.", never after a word such as "order" or "invoice", nor when shaped like a
  date, an IP address, a ZIP+4 code or an amount.
- national_id, by checksum: US SSN written NNN-NN-NNNN (stdnum.us.ssn), French NIR (stdnum.fr.nir), Spanish
  DNI and NIE (stdnum.es.dni, stdnum.es.nie), Italian codice fiscale (stdnum.it.codicefiscale), German tax
  id or IdNr (stdnum.de.idnr); and only right after their label, as one number in 11 passes the Dutch BSN's
  check and the UK National Insurance number has none (stdnum has no NINO): BSN (stdnum.nl.bsn) and NINO.
  Not covered: UK, Canadian and other ids without a checksum or a fixed shape.
When two entities claim overlapping text, the first in PRIORITY keeps it: an IBAN, a card number or an SSN may
hold a valid phone number.
"""

import re
from typing import NamedTuple

import phonenumbers
from stdnum import iban, luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

ENTITIES = ("email", "phone", "card", "iban", "national_id")
PRIORITY = ("email", "iban", "card", "national_id", "phone")
# Regions whose national numbers (without +) are recognised. US stands for all of +1, Canada included:
# phonenumbers validates a +1 number against the region its area code belongs to.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL")


class Match(NamedTuple):
    entity: str
    start: int
    end: int
    value: str


class Vault:
    """Tokens of one run: the same value always gets the same token (<EMAIL_1>, <PHONE_2>, <CARD_1>, <IBAN_1>,
    <NATIONAL_ID_1>). `changed` tells the caller whether there is anything new to store."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # token -> value
        self._tokens: dict[tuple[str, str], str] = {}  # (entity, value) -> token
        self._counts: dict[str, int] = {}
        self.changed = False

    def token_for(self, entity: str, value: str) -> str:
        token = self._tokens.get((entity, value))
        if token is None:
            self._counts[entity] = self._counts.get(entity, 0) + 1
            token = f"<{entity.upper()}_{self._counts[entity]}>"
            self._add(entity, token, value)
            self.changed = True
        return token

    def _add(self, entity: str, token: str, value: str) -> None:
        self.values[token] = value
        self._tokens[(entity, value)] = token

    def to_json(self) -> dict:
        return {"tokens": dict(self.values)}

    @classmethod
    def from_json(cls, data: dict) -> "Vault":
        vault = cls()
        for token, value in data.get("tokens", {}).items():
            entity, number = TOKEN.fullmatch(token).groups()
            entity = entity.lower()
            vault._add(entity, token, value)
            vault._counts[entity] = max(vault._counts.get(entity, 0), int(number))
        return vault


TOKEN = re.compile(r"<(%s)_([1-9]\d*)>" % "|".join(entity.upper() for entity in ENTITIES))
NON_DIGIT = re.compile(r"\D")

EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[A-Za-z0-9-]+\.)+([A-Za-z]{2,24})\b(?![@-]|:\S|\.\w)")
URL_USERINFO = re.compile(r"://[^\s/?#@]*$")
IMAGE_SUFFIXES = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico"}

# Scanning 2 kB costs ~40 µs a pattern on a development machine: a dozen patterns would take half the budget.
# Cards, phone numbers, SSNs, NIRs, DNIs, NIEs and IdNrs hold 7 digits at most 2 separators apart, so
# the text is scanned once for such runs and their patterns only search near one. The IBAN and codice fiscale
# patterns start with an upper-case class (the lookbehind after it), which the regex engine skips ahead to.
DIGIT_RUN = re.compile(r"\d(?:[ ().\-/]{0,2}\d){6,}+")
NEXT_WORD = re.compile(r"[\w-]*")

# Not preceded by a digit and a separator, nor followed by one and a digit: part of a longer run is no card.
CARD = re.compile(r"(?<![\w.,+-])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![\w]|[ -]?\d|[.,]\d)")
# (lowest prefix, highest prefix, lengths): issuers a customer is likely to hold a card of. No 13-digit Visa
# (long gone) nor Maestro under 16 digits: they would take EAN-13 barcodes, whose prefixes 40-44 and 50 they share.
CARD_ISSUERS = (
    ("4", "4", (16, 19)),  # Visa
    ("51", "55", (16,)), ("2221", "2720", (16,)),  # Mastercard
    ("34", "34", (15,)), ("37", "37", (15,)),  # American Express
    ("300", "305", range(14, 20)), ("36", "36", range(14, 20)), ("38", "39", range(14, 20)),  # Diners
    ("6011", "6011", range(16, 20)), ("644", "649", range(16, 20)), ("65", "65", range(16, 20)),  # Discover
    ("3528", "3589", range(16, 20)),  # JCB
    ("62", "62", range(16, 20)),  # UnionPay
    ("50", "50", range(16, 20)), ("56", "58", range(16, 20)), ("67", "67", range(16, 20)),  # Maestro
)

IBAN = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")

# The ids searched near a run of digits, one group each, and their checks.
NATIONAL_ID = re.compile(
    r"(?P<ssn>(?<![\w-])\d{3}-\d{2}-\d{4}(?![\w-]))"
    r"|(?P<nir>(?<![\w-])(?<!\d )[1-478] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\w-]| \d))"
    r"|(?P<dni>(?<![\w-])(?:\d{8}|[XYZ]-?\d{7})-?[A-Z](?!\w))"
    r"|(?P<idnr>(?<![\w+-])(?<!\d )[1-9]\d(?: ?\d{3}){3}(?![\w-]| \d))")
NATIONAL_ID_CHECKS = {"ssn": ssn.is_valid, "nir": nir.is_valid, "idnr": idnr.is_valid,
                      "dni": lambda number: dni.is_valid(number) or nie.is_valid(number)}
CODICE_FISCALE = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z]{5}[0-9LMNP-V]{2}[A-EHLMPR-T][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}"
                            r"[A-Z]\b")
# (words one of which the text must hold, pattern, check) of the ids only taken after their label; the
# pattern's group is the number.
LABELLED_IDS = (
    (("bsn", "burgerservicenummer"),
     re.compile(r"(?i:\b(?:BSN|burgerservicenummer)\b)[^\n\d]{0,20}?\b(\d{9}|\d{4}\.\d{2}\.\d{3})\b"), bsn.is_valid),
    (("insurance", "ni n", "nino"),
     re.compile(r"(?i:\b(?:national insurance|NI number|NI no|NINO)\b)[^\n\d]{0,20}?"
                r"\b((?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D])\b"),
     lambda number: True),  # the label and the letters allowed are all there is to check
)

# Digit groups split by single separators, maybe after a +, a (+34) or an area code in brackets. Possessive, so
# that a long run of digits costs one pass, and a group that runs on into a word, an amount or a time is no phone.
PHONE = re.compile(r"(?<![\w@/.,+#-])(?<!\d:)(?:\(\+\d{1,3}\) ?|\+)?+(?:\d++[ .-])?(?:\(\d{1,4}\) ?)?+"
                   r"\d++(?:[ .\-/]\d++)*+(?![\w@]|[.,:]\d)")
NOT_PHONE = re.compile(
    r"\d{4}([-/.])\d{1,2}\1\d{1,2}|\d{1,2}([-/.])\d{1,2}\2\d{4}"  # dates
    r"|\d{1,3}(?:\.\d{1,3}){3}"  # IPv4 addresses
    r"|\d{1,3}(?:[.,]\d{3})+"  # amounts with thousands separators
    r"|\d{5}-\d{4}"  # US ZIP+4
)
UNIT_AFTER = re.compile(r" ?(?:[€$£%]|(?:EUR|USD|GBP|CHF|kg|km|MB|GB|KB|bytes|items|units)\b)")
CURRENCY_BEFORE = re.compile(r"[€$£] ?$")
# The nearest of these before a number says what it is: "order 4155552671" is no phone, "Tel. 4155552671" is.
LABEL = re.compile(  # matched on lower-case text: (?i) makes it 6 times slower
    r"\b(?:(?P<phone>phone\w*|tel|tél|telephone|téléphone|teléfono|telefono|telefon\w*|call\w*|mobile?\w*|cell"
    r"|fax|sms|whatsapp|handy\w*|portable|móvil|movil|llam\w*|appel\w*|anruf\w*|rückruf\w*|ruf\w*|dial\w*|joindre)"
    r"|order\w*|invoice\w*|inv|ref|reference|référence|referencia|tracking|ticket\w*|case|sku|serial|commande"
    r"|facture|suivi|colis|pedido|factura|seguimiento|bestell\w*|rechnung\w*|sendung\w*|auftrag\w*|kunden\w*"
    r"|iban|bic|blz|tax|vat|tva|iva|siren|siret|nif|cif|steuer\w*|ust\w*|isbn|issn|ean|gtin|upc|imei)\b")
LABEL_WINDOW = 40
TRUNK_PREFIX = {region: phonenumbers.PhoneMetadata.metadata_for_region(region).national_prefix
                for region in PHONE_REGIONS}


def _digit_windows(text: str) -> list[tuple[int, int]]:
    """(start, end) around each run of 7 digits or more: from 2 characters before it (a +, an NIE's letter)
    to 2 after the word that ends it (a DNI's letter), so that the patterns' lookarounds see the real text."""
    windows: list[tuple[int, int]] = []
    for m in DIGIT_RUN.finditer(text):
        start, end = max(0, m.start() - 2), min(len(text), NEXT_WORD.match(text, m.end()).end() + 2)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


def _emails(text: str, windows, found):
    # Matched from the start of the word before each @: a pattern that starts with a word class is slow to
    # search 2 kB with, and a search per @ would make a text full of @ slow.
    at = text.find("@")
    while at != -1:
        start = at
        while start > max(0, at - 64) and (text[start - 1].isalnum() or text[start - 1] in "._%+-"):
            start -= 1
        m = EMAIL.match(text, start, at + 256)
        if (m and m.group(1).lower() not in IMAGE_SUFFIXES
                and not URL_USERINFO.search(text, max(0, start - 200), start)):
            yield Match("email", m.start(), m.end(), m.group())
        at = text.find("@", m.end() if m else at + 1)


def _card_issuer(digits: str) -> bool:
    return any(low <= digits[:len(low)] <= high and len(digits) in lengths for low, high, lengths in CARD_ISSUERS)


def _cards(text: str, windows, found):
    for start, end in windows:
        for m in CARD.finditer(text, start, end):
            digits = NON_DIGIT.sub("", m.group())
            if _card_issuer(digits) and luhn.is_valid(digits):
                yield Match("card", m.start(), m.end(), m.group())


def _ibans(text: str, windows, found):
    for m in IBAN.finditer(text):
        value = m.group()
        # The last group or two may be the next words ("... 0130 00 BIC COBA"): drop them until the rest is one.
        for _ in range(3):
            if iban.is_valid(value):
                yield Match("iban", m.start(), m.start() + len(value), value)
                break
            if " " not in value:
                break
            value = value.rsplit(" ", 1)[0]


def _national_ids(text: str, windows, found):
    for start, end in windows:
        for m in NATIONAL_ID.finditer(text, start, end):
            if NATIONAL_ID_CHECKS[m.lastgroup](m.group()):
                yield Match("national_id", m.start(), m.end(), m.group())
    for m in CODICE_FISCALE.finditer(text):
        if codicefiscale.is_valid(m.group()):
            yield Match("national_id", m.start(), m.end(), m.group())
    lowered = text.lower()
    for words, pattern, is_valid in LABELLED_IDS:
        if any(word in lowered for word in words):
            for m in pattern.finditer(text):
                if is_valid(m.group(1)):
                    yield Match("national_id", m.start(1), m.end(1), m.group(1))


def _phone_label(text: str, start: int) -> str:
    """'phone' or 'other' after the nearest label in the words before `start`, '' without one."""
    label = ""
    for m in LABEL.finditer(text[max(0, start - LABEL_WINDOW):start].lower()):
        label = "phone" if m.group("phone") else "other"
    return label


def _is_phone(text: str, start: int, end: int, value: str) -> bool:
    digits = NON_DIGIT.sub("", value)
    if not 7 <= len(digits.removeprefix("00")) <= 15:
        return False
    if value.startswith(("+", "(+")):
        number, regions = "+" + value.lstrip("(+"), (None,)
    else:
        if (NOT_PHONE.fullmatch(value) or UNIT_AFTER.match(text, end)
                or CURRENCY_BEFORE.search(text, max(0, start - 2), start)):
            return False
        label = _phone_label(text, start)
        if label == "other" or (label == "" and value == digits):
            return False
        if digits.startswith("00"):  # dialled from abroad
            number, regions = "+" + digits[2:], (None,)
        else:
            # A trunk 0 (GB, DE, FR, NL) is always written, and a +1 number never starts with 0: "941031234" is
            # no German number, and "020 7946 0958" no American one.
            number, regions = value, [region for region in PHONE_REGIONS if TRUNK_PREFIX[region] not in ("0", "1")
                                      or (TRUNK_PREFIX[region] == "0") == (digits[0] == "0")]
    for region in regions:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(number, region)):
                return True
        except phonenumbers.NumberParseException:
            pass
    return False


def _phones(text: str, windows, found):
    for start, end in windows:
        for m in PHONE.finditer(text, start, end):
            # Parsing is the costliest check: none for a number another entity has taken.
            if not _overlaps(m.start(), m.end(), found) and _is_phone(text, m.start(), m.end(), m.group()):
                yield Match("phone", m.start(), m.end(), m.group())


def _overlaps(start: int, end: int, found: list[Match]) -> bool:
    return any(start < other.end and other.start < end for other in found)


FINDERS = {"email": _emails, "iban": _ibans, "card": _cards, "national_id": _national_ids, "phone": _phones}


def find(text: str, entities=ENTITIES) -> list[Match]:
    """Personal data in `text`, in order and not overlapping. Entities ahead of a wanted one in PRIORITY are
    looked for too, so that they keep their text from it, but not returned."""
    unknown = set(entities) - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown entities: {sorted(unknown)}")
    last = max((PRIORITY.index(entity) for entity in entities), default=-1)
    windows = _digit_windows(text)
    found: list[Match] = []
    for entity in PRIORITY[:last + 1]:
        for match in FINDERS[entity](text, windows, found):
            if not _overlaps(match.start, match.end, found):
                found.append(match)
    return sorted((match for match in found if match.entity in entities), key=lambda match: match.start)


def masked(text: str) -> str:
    """`text` with each piece of personal data replaced by its kind, `<email>`: for logs and traces, where nothing
    needs it back."""
    for match in reversed(find(text)):
        text = text[:match.start] + f"<{match.entity}>" + text[match.end:]
    return text


# Texts this short found clean, with the entities looked for: a node's system prompt, sent with every model call,
# is looked through once. A text holding personal data of a kind looked for is never kept.
CLEAN_TEXT = 8192
_clean: set[tuple[str, tuple]] = set()


def redact(text: str, *, vault: Vault, entities=ENTITIES) -> str:
    entities = tuple(entities)  # any sequence, as find takes it, and a key of _clean
    if (text, entities) in _clean:
        return text
    parts, last = [], 0
    for match in find(text, entities):
        parts += (text[last:match.start], vault.token_for(match.entity, match.value))
        last = match.end
    if not parts:
        if len(text) <= CLEAN_TEXT:
            if len(_clean) >= 1024:
                _clean.clear()
            _clean.add((text, entities))
        return text
    parts.append(text[last:])
    return "".join(parts)


def redact_json(value, *, vault: Vault, entities=ENTITIES):
    """A copy of a JSON-like value with every string in it redacted; keys, numbers and the rest as they are."""
    if isinstance(value, str):
        return redact(value, vault=vault, entities=entities)
    if isinstance(value, dict):
        return {key: redact_json(item, vault=vault, entities=entities) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_json(item, vault=vault, entities=entities) for item in value]
    return value


def refill(text: str, vault: Vault) -> str:
    """`text` with the vault's tokens back to their values; a token the vault doesn't hold stays as it is."""
    return TOKEN.sub(lambda m: vault.values.get(m.group(), m.group()), text)


def refill_json(value, vault: Vault):
    """A copy of a JSON-like value with the vault's tokens in every string back to their values."""
    if isinstance(value, str):
        return refill(value, vault)
    if isinstance(value, dict):
        return {key: refill_json(item, vault) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [refill_json(item, vault) for item in value]
    return value
