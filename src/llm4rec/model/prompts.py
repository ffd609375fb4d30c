"""The constant text of the prompt templates (docs/method.md 4.3-4.6).

One home for the encoder, which builds the prompts, and for the tokenizer of the `tiny`
backbone, which must learn these words: a tokenizer trained only on a dataset's reviews and
item fields spells any template word those texts lack letter by letter (on Amazon Beauty,
whose only texts are category names, " has interacted with" was 18 tokens).
"""

from __future__ import annotations

REVIEW = " wrote the following review for"
COLON = ":"
HAS_INTERACTED = " has interacted with"
WILL_INTERACT = " will interact with"
COMMA = ","
THESE_ITEMS = "These items"

# (field, tail, head): "The title of" [i] " is:" <title>
ITEM_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("title", " is:", "The title of"),
    ("brand", " is:", "The brand of"),
    ("categories", " are:", "The categories of"),
    ("description", " is:", "The description of"),
)
SECOND_ORDER_TAIL: dict[str, str] = {"brand": " have the same brand:", "category": " are all in the category:"}
TEMPLATE_TEXTS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            REVIEW,
            COLON,
            HAS_INTERACTED,
            WILL_INTERACT,
            COMMA,
            THESE_ITEMS,
            *(t for _, tail, head in ITEM_FIELDS for t in (head, tail)),
            *SECOND_ORDER_TAIL.values(),
        ]
    )
)
