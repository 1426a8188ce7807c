"""The label from the query: named targets, reasoning questions through the query encoder, and the fallback."""

import pytest

from ibisagent.dicom.codes import code_for_label, known_labels
from ibisagent.labels import SIMILARITY_THRESHOLD, choose_label, label_descriptions, label_from_query
from ibisagent.policies.query_encoder import shared_query_encoder


@pytest.mark.parametrize("query, label", [
    ("Segment the liver.", "liver"),
    ("Please outline the left kidney.", "kidney left"),
    ("Segment the kidney on the right side.", "kidney right"),
    ("Can you find the gall bladder in this image?", "gallbladder"),
    ("Where is the IVC? Mark it on the image.", "inferior vena cava"),
    ("Segment the lesion in the liver.", "lesion"),  # the object, not where it lies
    ("left kidney", "kidney left"),
    # not the request's object: a known name that only says where the target is, or a part of it
    ("Segment the gland on top of the left kidney.", None),
    ("Segment the heart chamber that pumps blood into the aorta.", None),
    ("Segment the liver and the spleen.", None),  # two targets: no guess
])
def test_named_targets_without_the_encoder(query, label):
    assert label_from_query(query).label == label


def test_reasoning_questions_go_through_the_query_encoder():
    bile = label_from_query("Which organ produces bile? Segment it.", shared_query_encoder)
    assert (bile.label, bile.how) == ("liver", "query encoder") and bile.similarity >= SIMILARITY_THRESHOLD
    side = label_from_query("Find the bean-shaped organ on the right that makes urine.", shared_query_encoder)
    assert side.label == "kidney right"  # the query's side word picks the side
    unknown = label_from_query("Segment the thyroid gland.", shared_query_encoder)
    assert unknown.label is None and unknown.similarity < SIMILARITY_THRESHOLD and "below" in unknown.note
    assert choose_label(" liver ", "Segment the spleen.").to_dict() == {"label": "liver", "how": "given"}


def test_every_description_is_of_a_known_label_with_a_specific_code():
    assert set(label_descriptions()) <= set(known_labels())
    assert all(code_for_label(label).known for label in label_descriptions())
