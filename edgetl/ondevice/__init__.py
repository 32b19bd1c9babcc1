"""On-device adaptation of the head (torch-free): versioned head store, weight imprinting,
softmax-regression retraining, the guardrail that keeps old classes safe, rollback."""
