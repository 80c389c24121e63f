"""Models pulled from a Hugging Face hub (`pull hf.co/{user}/{repo}[:{quant}]`).

`ref` parses the names, `choose` picks the files of a repo, `listing` asks the hub (huggingface_hub, in a
thread), `download` fetches one file resumably, `progress` shapes Ollama's pull objects, `pull` runs a pull.
Nothing is imported here: `runtime.models_dir` uses the pure `ref` without loading the rest.
"""
