from rnnlab.cli.main import entry

entry()
