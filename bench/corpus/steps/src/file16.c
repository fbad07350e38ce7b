/* Generated source 16 of the steps context. */
int f16(int x) { return x * 16 + 1; }
