"""Pure model code: torch tensors and numpy arrays in, torch tensors and numpy arrays out.

Nothing here imports Ray, LanceDB, storage, pipelines or jobs; only registry/ reads files (weights).
One exception talks to the network: rerank/openai_client.py, the re-ranker whose model runs on an
OpenAI-compatible server (HTTP). It stays beside the local backends because it is the same model step
behind the same Reranker interface, built by the same registry/rerankers.build_reranker; only where the
model runs differs.
"""
