/* Generated source 12 of the steps context. */
int f12(int x) { return x * 12 + 1; }
