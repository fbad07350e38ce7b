/* Generated source 11 of the steps context. */
int f11(int x) { return x * 11 + 1; }
