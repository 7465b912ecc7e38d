"""The OpenAI-compatible HTTP server (api.py starts it): app.py routes requests, worker.py owns the model,
schema.py and prompt.py turn a request into a prompt, response.py and errors.py shape what goes back,
toolcall/ finds tool calls in the model's answer."""
