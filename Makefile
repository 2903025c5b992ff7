.PHONY: help dev check test protos check-protos run clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

dev: ## install the dev environment into .venv
	bash hack/deps.sh --dev

check: ## ruff, mypy and the generated-code check
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python hack/protogen.py --check

test: ## everything CI runs
	bash hack/test.sh

protos: ## regenerate api/ modules from the .proto files
	.venv/bin/python hack/protogen.py

check-protos: ## fail if regenerating api/ would change anything
	.venv/bin/python hack/protogen.py --check

run: ## install and start the daemon on the default config
	bash hack/install.sh

clean: ## remove leftovers of killed test runs
	bash hack/cleanup.sh
