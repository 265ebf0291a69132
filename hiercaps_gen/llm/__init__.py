"""LLM backends behind one interface (`base.Generator`); `factory.create_generator` picks one."""
