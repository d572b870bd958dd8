"""`minigpt serve`: an OpenAI-compatible endpoint and a chat page over a trained model (engine.py batches, api.py speaks HTTP)."""
