"""Seed a Chroma server with the demo data set.

The data set is small and self-contained: short notes on a handful of topics,
embedded with a deterministic feature-hashing embedder (no model download), so
that nearest-neighbour queries group notes by topic.

usage: seed.py URL [COUNT]
"""

import hashlib
import math
import sys
from urllib.parse import urlparse

import chromadb

DIM = 64
TOPICS = {
    "backup": ["snapshot", "restore", "retention", "archive", "repository", "encrypted", "verify"],
    "network": ["latency", "timeout", "retry", "packet", "socket", "bandwidth", "proxy"],
    "search": ["vector", "embedding", "nearest", "neighbour", "index", "cosine", "recall"],
    "storage": ["disk", "bucket", "object", "blob", "volume", "replica", "durable"],
    "ops": ["systemd", "journal", "metrics", "alert", "deploy", "config", "reload"],
}
TEMPLATES = [
    "Notes on {a} and {b} for the {t} team",
    "How {a} interacts with {b} in production {t}",
    "A checklist: {a}, then {b}, then review {t}",
    "Why {a} matters more than {b} when planning {t}",
]


def embed(text):
    v = [0.0] * DIM
    for word in text.lower().split():
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
        v[h % DIM] += 1.0 if (h >> 16) & 1 else -1.0
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


def records(count):
    i = 0
    while i < count:
        for t, words in TOPICS.items():
            a = words[i % len(words)]
            b = words[(i * 3 + 1) % len(words)]
            doc = TEMPLATES[i % len(TEMPLATES)].format(a=a, b=b, t=t)
            yield f"doc-{i}", doc, {"topic": t, "n": i}
            i += 1
            if i >= count:
                return


def main():
    url = urlparse(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    client = chromadb.HttpClient(host=url.hostname, port=url.port)
    col = client.get_or_create_collection(
        "articles", metadata={"source": "chromaprod demo"}, embedding_function=None,
        configuration={"hnsw": {"space": "l2"}},
    )
    ids, docs, metas = zip(*records(count))
    col.upsert(ids=list(ids), documents=list(docs), metadatas=list(metas),
               embeddings=[embed(d) for d in docs])
    print(f"seeded collection 'articles' with {col.count()} records ({DIM} dims)")


if __name__ == "__main__":
    main()
