/* Generated source 23 of the steps context. */
int f23(int x) { return x * 23 + 1; }
