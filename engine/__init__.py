"""The generation engine's parts that know nothing of chat or servers: sampling (the next token from
logits), speculative decoding (a draft model guesses, the target checks), and the text layer (token ids
to streamed text, stop strings)."""
