/* Generated source 24 of the steps context. */
int f24(int x) { return x * 24 + 1; }
