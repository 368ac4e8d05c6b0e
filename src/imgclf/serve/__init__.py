"""Real-time serving: imgclf.serve.app.create_app builds the FastAPI service (needs the serve extra)."""
