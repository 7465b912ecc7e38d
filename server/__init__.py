"""The OpenAI-compatible HTTP server (api.py starts it). app.py routes requests and worker.py owns the
model; schema.py, prompt.py and messages.py turn a request into a prompt; modes.py holds the three ways an
answer is read (plain, tools, legacy functions); response.py and errors.py shape what goes back; toolcall/
finds calls in the model's text."""
