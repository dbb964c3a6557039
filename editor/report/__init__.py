"""What a user reads and publishes: the model card of an edit folder and the push to the Hugging Face Hub."""
