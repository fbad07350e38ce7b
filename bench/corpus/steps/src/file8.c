/* Generated source 8 of the steps context. */
int f8(int x) { return x * 8 + 1; }
