/* Generated source 36 of the steps context. */
int f36(int x) { return x * 36 + 1; }
