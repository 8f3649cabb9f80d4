"""System prompts that define the output format the rewards look for."""

# The reference recipe's system message (docs/reference-recipe.md): it begins and
# ends with a newline, and the rule rewards check exactly these tags.
REFERENCE_SYSTEM_PROMPT = (
    "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
)
