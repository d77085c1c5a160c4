"""Pure model code: torch tensors and numpy arrays in, torch tensors and numpy arrays out.

Nothing here imports Ray, LanceDB, storage, pipelines or jobs; only registry/ reads files (weights).
"""
